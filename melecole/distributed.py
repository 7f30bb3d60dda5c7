"""torchrun / DistributedDataParallel set-up and tear-down, and the few collectives training needs.

A process started by ``torchrun`` finds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its
environment and joins the process group: gloo on CPU, NCCL on CUDA, each rank on
``cuda:LOCAL_RANK``. Without them everything here degrades to a single process, so the same
training code runs alone, under ``torchrun --nproc_per_node N`` and across nodes.

Failure never hangs: collectives time out after ``timeout`` seconds, and a rank that dies
closes its connections, so its peers' next collective fails at once; torchrun then stops the
remaining ranks and exits non-zero. On Linux the ranks also die with their launcher: torchrun
starts them in sessions of their own, and a SIGKILLed torchrun would otherwise leave them
training on, writing the same files as the run started next.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from melecole.lifetime import die_with_parent

_TORCHRUN_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its global rank, its rank on this node and the number of ranks."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 validates and writes checkpoints, metrics and MLflow entries."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or another launcher setting its variables) started."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def torchrun_command(processes: int, arguments: list[str], module: str = "melecole.cli") -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m module arguments...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", module, *arguments]


def relaunch(processes: int, arguments: list[str]) -> int:
    """Runs ``melecole <arguments>`` as ``processes`` DDP ranks on this machine; returns torchrun's exit status.

    ``OMP_NUM_THREADS`` is set to an equal share of the cores unless already set, so the ranks do
    not oversubscribe the CPU (torchrun would otherwise force 1 and warn). torchrun, and through
    it the ranks, stop when this process is killed.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return subprocess.run(torchrun_command(processes, arguments), env=env, check=False,
                          preexec_fn=die_with_parent).returncode


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for everything on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of one rank: ``cuda:LOCAL_RANK`` when training on CUDA, else ``device`` unchanged."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def init(device: torch.device, timeout: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Joins the process group when launched by torchrun; a no-op for a single process.

    Args:
        device: the configured device; under torchrun, CUDA means ``cuda:LOCAL_RANK``.
        timeout: seconds any collective (or the start-up rendezvous) may wait for the others.

    Returns:
        This process's :class:`DistContext` and the device it trains on.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        if dist.is_initialized():
            return DistContext(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()), device
        return DistContext(), device
    die_with_parent()
    local_rank = int(os.environ["LOCAL_RANK"])
    device = process_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout),
                            device_id=device if device.type == "cuda" else None)
    return DistContext(dist.get_rank(), local_rank, dist.get_world_size()), device


def teardown() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks in the process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _tensor_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo takes CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Waits until every rank gets here (within the process group's timeout)."""
    if _active():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not _active():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_tensor_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks; every rank must pass the same keys."""
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_tensor_device())
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return {key: float(value) for key, value in zip(keys, tensor.tolist())}


def broadcast_object(value: object, src: int = 0) -> object:
    """Rank ``src``'s ``value`` on every rank (pickled: only for objects this program made)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=_tensor_device())
    return box[0]


def gather_objects(value: object) -> list:
    """Every rank's ``value``, in rank order, on every rank (a list of one without a group)."""
    if not _active():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_tensors(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape everywhere) concatenated along dim 0, in rank order.

    No gradient flows through it; without a process group it is ``tensor`` itself.
    """
    if not _active():
        return tensor
    device = _tensor_device()
    local = tensor.detach().to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank (same shape and dtype everywhere)."""
    if not _active():
        return tensor
    local = tensor.detach().to(_tensor_device()).contiguous()
    dist.broadcast(local, src=src)
    return local.to(tensor.device)
