"""DDP on this machine: 2 gloo ranks under torchrun agree with each other and with one process;
a dying rank or a non-finite loss on one rank stops the job. (`melecole train` with
train.processes=2: tests/test_distributed_launcher.py.)

Run as a script (``torchrun ... tests/test_distributed.py MODE OUT``) this file is the worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from melecole.losses import EmbeddingLoss, MultitaskLoss
from melecole.models import build_model
from melecole.training import StepOptions, train_loop

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
# Two ranks' gradients averaged vs one batch of two: the same sums in a different order, so the
# last bits differ (measured: losses 1e-7 apart relatively, weights 5e-6 after 3 Adam steps).
# Against gradient accumulation over the same two patches the figures come out equal.
LOSS_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 5e-5


class ListSampler:
    """Hands out fixed (raw, labels) patches in order; optionally fails, or gives NaN raw, at one draw."""

    def __init__(self, patches, fail_at: int | None = None, nan_at: int | None = None):
        self.patches, self.draws, self.fail_at, self.nan_at = list(patches), 0, fail_at, nan_at

    def sample(self):
        self.draws += 1
        if self.fail_at is not None and self.draws >= self.fail_at:
            raise RuntimeError(f"rank failing on purpose at draw {self.draws}")
        raw, labels = self.patches[self.draws - 1]
        return (raw * float("nan"), labels) if self.draws == self.nan_at else (raw, labels)


def global_batches(count: int):
    """``count`` (raw, labels) patches of a block volume: the global batch, in order."""
    from tests.conftest import blocks_volume

    patches = []
    for index in range(count):
        raw, labels = blocks_volume(shape=(24, 24, 24), seed=index)
        corner = index % 8
        region = (slice(corner, corner + 16),) * 3
        patches.append(((raw[region].astype("float32") - 128) / 64, labels[region]))
    return patches


def run(sampler, batch_size: int, accumulate: int = 1) -> tuple[torch.nn.Module, list[float]]:
    """A few Adam steps of a tiny U-Net on ``sampler``; returns the model and the logged losses."""
    torch.manual_seed(0)
    model = build_model("unet3d", base_channels=4, embedding_dim=4, downsample=[[2, 2, 2]])
    network = model
    if torch.distributed.is_initialized():
        network = torch.nn.parallel.DistributedDataParallel(model)
    # boundary_weight 0: the class-balanced boundary BCE weighs classes over the whole batch, so
    # only the discriminative terms (a mean over batch elements) split exactly across ranks.
    loss_fn = MultitaskLoss(EmbeddingLoss(boundary_weight=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: list[float] = []
    train_loop(network, loss_fn, sampler, optimizer, STEPS, batch_size, torch.device("cpu"), log_every=1,
               val_every=STEPS, on_log=lambda figures, step: losses.append(figures["train_loss"]),
               options=StepOptions(accumulate=accumulate))
    return model, losses


def _worker(mode: str, out: Path) -> None:
    from melecole import distributed

    torch.set_num_threads(1)
    context, _ = distributed.init(torch.device("cpu"), timeout=60)
    try:
        rank, world = context.rank, context.world_size
        patches = global_batches(STEPS * world)
        mine = patches[rank::world]  # step s gives rank r the patch s * world + r
        sampler = ListSampler(mine, fail_at=2 if mode == "fail" and rank == 1 else None,
                              nan_at=2 if mode == "nan" and rank == 1 else None)
        model, losses = run(sampler, batch_size=1)
        torch.save({"state": model.state_dict(), "losses": losses}, out / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(mode: str, out: Path, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__)), mode, str(out)]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_single_process_without_torchrun(monkeypatch):
    from melecole import distributed

    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_torchrun()
    context, device = distributed.init(torch.device("cpu"))
    assert context == distributed.DistContext(0, 0, 1) and context.is_main and not context.distributed
    assert device == torch.device("cpu")
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.mean_over_ranks({"loss": 2.5}) == {"loss": 2.5}
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}] and distributed.world_size() == 1
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched_by_torchrun()


def test_backend_device_and_launch_command_follow_the_device():
    from melecole import distributed

    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.process_device(torch.device("cuda"), 3) == torch.device("cuda", 3)
    assert distributed.process_device(torch.device("cpu"), 3) == torch.device("cpu")
    command = distributed.torchrun_command(4, ["train", "--out", "o.pt"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "melecole.cli",
                           "train", "--out", "o.pt"]


def test_two_ranks_hold_identical_weights_and_match_one_process(tmp_path):
    done = _torchrun("train", tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0["state"][k], rank1["state"][k]) for k in rank0["state"])
    assert rank0["losses"] == rank1["losses"]  # the logged loss is the mean over the ranks

    patches = global_batches(STEPS * 2)
    single, single_losses = run(ListSampler(patches), batch_size=2)
    accumulated, accumulated_losses = run(ListSampler(patches), batch_size=1, accumulate=2)
    assert len(rank0["losses"]) == STEPS
    assert rank0["losses"] == pytest.approx(single_losses, rel=LOSS_TOLERANCE)
    assert rank0["losses"] == pytest.approx(accumulated_losses, rel=LOSS_TOLERANCE)
    # The weights moved, and moved the same way as in one process with the same global batch.
    torch.manual_seed(0)
    initial = build_model("unet3d", base_channels=4, embedding_dim=4, downsample=[[2, 2, 2]]).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in single.state_dict().items())
    for key, value in single.state_dict().items():
        torch.testing.assert_close(rank0["state"][key], value, rtol=0, atol=WEIGHT_TOLERANCE)


def test_a_dying_rank_makes_the_job_exit_non_zero(tmp_path):
    start = time.monotonic()
    done = _torchrun("fail", tmp_path, timeout=150)
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert elapsed < 120, f"the job took {elapsed:.0f} s to stop"
    assert "rank failing on purpose" in done.stderr
    assert not (tmp_path / "rank0.pt").exists() and not (tmp_path / "rank1.pt").exists()


def test_a_non_finite_loss_on_one_rank_stops_both(tmp_path):
    done = _torchrun("nan", tmp_path, timeout=150)
    assert done.returncode != 0
    assert "non-finite loss at step 2 (loss=nan" in done.stderr  # rank 1, with its terms
    assert "non-finite loss at step 2 on another rank" in done.stderr  # rank 0 stops too
    assert not list(tmp_path.glob("rank*.pt"))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _worker(sys.argv[1], Path(sys.argv[2]))

