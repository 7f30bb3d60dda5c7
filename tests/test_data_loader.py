"""The training data loader: the tensors training expects, reproducible and distinct per worker and epoch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from melecole.data.augment import AugmentConfig
from melecole.data.loader import GridPatches, PatchStream, make_loader, patch_targets, worker_seed
from melecole.data.normalize import normalize_raw
from melecole.data.sampling import PatchSampler
from melecole.training import make_batch
from tests.conftest import REPO, blocks_volume
from tests.processes import descendants, wait_gone

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def volumes():
    pairs = []
    for seed, shape in ((0, (24, 32, 32)), (1, (20, 40, 28))):
        raw, labels = blocks_volume(shape, block=6, seed=seed)
        pairs.append((normalize_raw(raw), labels))
    return pairs


def _batches(dataset, workers, count, batch_size=2):
    loader = make_loader(dataset, batch_size, workers)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def _assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_patch_targets_are_the_tensors_make_batch_builds(volumes):
    expected = make_batch(PatchSampler(volumes, PATCH, np.random.default_rng(5)), 3, torch.device("cpu"))
    sampler = PatchSampler(volumes, PATCH, np.random.default_rng(5))
    samples = [patch_targets(*sampler.sample()) for _ in range(3)]
    stacked = torch.utils.data.default_collate(samples)
    assert stacked.keys() == expected.keys()
    for key in expected:
        assert stacked[key].dtype == expected[key].dtype and torch.equal(stacked[key], expected[key]), key
    assert stacked["raw"].shape == (3, 1, *PATCH) and stacked["instances"].shape == (3, *PATCH)


def test_patch_targets_can_add_affinities_and_thicker_boundaries(volumes):
    raw, labels = volumes[0][0][:16, :16, :16], volumes[0][1][:16, :16, :16]
    sample = patch_targets(raw, labels, boundary_width=2, offsets=[(-1, 0, 0), (0, 0, -3)])
    assert sample["affinities"].shape == sample["affinity_mask"].shape == (2, *PATCH)
    assert sample["boundary"].sum() > patch_targets(raw, labels)["boundary"].sum()
    with pytest.raises(ValueError, match=r"\(16, 16, 16\) and labels \(16, 16, 15\)"):
        patch_targets(raw, labels[:, :, :15])


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches(volumes, workers):
    dataset = PatchStream(volumes, PATCH, seed=3, augment=AugmentConfig())
    first, second = _batches(dataset, workers, 4), _batches(dataset, workers, 4)
    _assert_same(first, second)
    batch = first[0]
    assert batch["raw"].shape == (2, 1, *PATCH) and batch["raw"].dtype == torch.float32
    assert batch["instances"].shape == (2, *PATCH) and batch["instances"].dtype == torch.int64
    assert batch["boundary"].shape == (2, 1, *PATCH) and batch["boundary"].dtype == torch.float32
    other = _batches(PatchStream(volumes, PATCH, seed=4, augment=AugmentConfig()), workers, 4)
    assert not torch.equal(first[0]["raw"], other[0]["raw"])


def test_workers_differ_from_each_other_and_epochs_from_each_other(volumes):
    dataset = PatchStream(volumes, PATCH, seed=0, augment=AugmentConfig())
    batches = _batches(dataset, 2, 2, batch_size=1)  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(batches[0]["raw"], batches[1]["raw"])
    # The main process (0 workers) draws as worker 0 does.
    single = _batches(dataset, 0, 1, batch_size=1)
    _assert_same(single, batches[:1])
    dataset.set_epoch(1)
    next_epoch = _batches(dataset, 2, 2, batch_size=1)
    assert not torch.equal(batches[0]["raw"], next_epoch[0]["raw"])
    states = {tuple(worker_seed(seed, epoch, worker).generate_state(4))
              for seed in range(2) for epoch in range(2) for worker in range(2)}
    assert len(states) == 8


def test_an_epoch_has_the_requested_number_of_patches(volumes):
    dataset = PatchStream(volumes, PATCH, seed=0, patches_per_epoch=5)
    loader = make_loader(dataset, batch_size=1, workers=2)
    assert sum(batch["raw"].shape[0] for batch in loader) == 5
    assert loader.multiprocessing_context is not None  # forked workers share the volumes


def test_grid_patches_dataset_covers_each_volume(volumes):
    grid = GridPatches(volumes, PATCH, overlap=(4, 4, 4))
    covered = [np.zeros(raw.shape, bool) for raw, _ in volumes]
    for index, box in grid.items:
        covered[index][box] = True
    assert all(c.all() for c in covered)
    sample = grid[len(grid) - 1]
    index, box = grid.items[-1]
    np.testing.assert_array_equal(sample["raw"][0].numpy(), volumes[index][0][box])
    loader = make_loader(grid, batch_size=4)
    assert sum(batch["raw"].shape[0] for batch in loader) == len(grid)


def test_affinity_targets_from_pieces_separate_arms_of_one_neuron_that_meet_outside_the_patch():
    # One neuron (id 5) whose two arms (x 0-2 and x 6-8) are joined only at z = 0, cut off here.
    labels = np.full((4, 4, 9), 7, dtype=np.uint64)
    labels[:, :, :3] = 5
    labels[:, :, 6:] = 5
    raw = np.zeros(labels.shape, np.float32)
    offsets = [(0, 0, -6), (0, 0, -1)]  # x and x - 6: arm to arm; nearest neighbours
    by_labels = patch_targets(raw, labels, offsets=offsets)
    by_pieces = patch_targets(raw, labels, offsets=offsets, affinity_pieces=True)
    assert by_labels["instances"][0, 0, 0] != by_labels["instances"][0, 0, 6]  # the embedding: two instances
    assert by_labels["affinities"][0, 0, 0, 6] == 1.0  # labels: one object
    assert by_pieces["affinities"][0, 0, 0, 6] == 0.0  # pieces: as the embedding sees them
    torch.testing.assert_close(by_pieces["affinity_mask"], by_labels["affinity_mask"])
    # Nearest neighbours of one label are always in one piece: those targets do not change.
    torch.testing.assert_close(by_pieces["affinities"][1], by_labels["affinities"][1])
    assert by_labels["affinities"][1].sum() > 0
    # make_batch builds the same targets from the sampler's patch.
    sampler = PatchSampler([(raw, labels)], labels.shape, np.random.default_rng(0), min_labelled=0.0)
    batch = make_batch(sampler, 1, torch.device("cpu"), offsets, affinity_pieces=True)
    assert batch["affinities"][0, 0, 0, 0, 6] == 0.0


def test_the_train_stage_passes_its_affinity_target_choice_to_every_batch(tmp_path, monkeypatch):
    import melecole.training as training
    from melecole.config import params_from_dict
    from melecole.io import write_volumes
    from melecole.stages import train as train_stage
    from tests.conftest import blocks_volume, tiny_params_dict

    for split, seed in (("train", 0), ("val", 1)):
        write_volumes(tmp_path / f"{split}.h5", dict(zip(("raw", "labels"), blocks_volume(seed=seed))))
    seen = []
    original = training.make_batch

    def spy(sampler, batch_size, device, offsets=None, affinity_pieces=False):
        seen.append((offsets is not None, affinity_pieces))
        return original(sampler, batch_size, device, offsets, affinity_pieces)

    monkeypatch.setattr(training, "make_batch", spy)
    for choice in ("labels", "pieces"):
        params = params_from_dict(tiny_params_dict(**{"train.steps": 1, "model.affinity_head": True,
                                                      "train.loss.affinity_targets": choice}))
        train_stage.train(params, [tmp_path / "train.h5"], [tmp_path / "val.h5"], tmp_path / choice / "model.pt")
    assert seen == [(True, False), (True, True)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_a_loader_worker_dies_with_its_killed_trainer(tmp_path):
    # The worker is stuck inside a sample, where torch's own check of its parent never runs:
    # only the parent-death signal can end it.
    fetching = tmp_path / "fetching"
    script = tmp_path / "trainer.py"
    script.write_text(textwrap.dedent(f"""
        import pathlib, time
        from torch.utils.data import Dataset
        from melecole.data.loader import make_loader

        class Stuck(Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, item):
                pathlib.Path({str(fetching)!r}).touch()
                time.sleep(3600)

        next(iter(make_loader(Stuck(), batch_size=1, workers=1)))
    """))
    trainer = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not fetching.exists():
        assert trainer.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    workers = descendants(trainer.pid)
    assert len(workers) == 1
    trainer.kill()
    trainer.wait(timeout=60)
    try:
        assert not wait_gone(workers, 10), "the loader worker outlived its killed trainer"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
