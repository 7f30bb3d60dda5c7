"""Torch datasets that keep the model fed: augmented random patches, and a fixed validation grid.

Each DataLoader worker draws from its own numpy Generator seeded by
``SeedSequence([seed, epoch, worker])``: workers differ from each other and from one epoch to
the next, and a run repeats exactly with the same seed and number of workers (the DataLoader
hands out the workers' batches in a fixed round-robin order). With 0 workers the main process
draws as worker 0. Volumes are plain numpy arrays held by the dataset; :func:`make_loader`
starts workers by fork, so they share the parent's volumes instead of copying them, and each
sample copies only the region it reads. Workers die with the process that started them
(:func:`die_with_trainer`): a training killed by SIGKILL or the OOM killer leaves no worker behind.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from melecole.data.augment import AugmentConfig, build_augmenter, read_shape
from melecole.data.sampling import Permute, PatchSampler, grid_patches
from melecole.data.targets import affinities, boundary_map, patch_instances
from melecole.lifetime import die_with_parent

Volumes = list[tuple[np.ndarray, np.ndarray]]


def worker_seed(seed: int, epoch: int, worker: int) -> np.random.SeedSequence:
    """The seed of one worker in one epoch; distinct for every (seed, epoch, worker)."""
    return np.random.SeedSequence([int(seed), int(epoch), int(worker)])


def patch_targets(raw: np.ndarray, labels: np.ndarray, boundary_width: int = 1,
                  offsets: Sequence[Sequence[int]] | None = None,
                  affinity_pieces: bool = False) -> dict[str, torch.Tensor]:
    """The training tensors of one patch, as ``melecole.training.make_batch`` builds them.

    Args:
        raw: (Z, Y, X) normalised raw.
        labels: (Z, Y, X) integer ground truth, 0 = ignore.
        boundary_width: erosion width of the boundary map (see ``boundary_map``).
        offsets: when given, also affinity targets at these offsets and their mask.
        affinity_pieces: affinity targets from the connected pieces (the instances) instead of
            the labels: pieces of one neuron that meet outside the patch are different objects.

    Returns:
        raw (1, Z, Y, X) float32, instances (Z, Y, X) int64 (connected pieces, 0 = ignore),
        labels (Z, Y, X) int64 (the ground truth), boundary (1, Z, Y, X) float32; with
        ``offsets`` also affinities and affinity_mask (C, Z, Y, X) float32.
    """
    if raw.shape != labels.shape:
        raise ValueError(f"raw {raw.shape} and labels {labels.shape} differ in shape")
    instances = patch_instances(labels)
    sample = {
        "raw": torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)[None]),
        "instances": torch.from_numpy(instances),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "boundary": torch.from_numpy(boundary_map(labels, boundary_width)[None]),
    }
    if offsets is not None:
        affs, mask = affinities(instances if affinity_pieces else labels, offsets)
        sample["affinities"], sample["affinity_mask"] = torch.from_numpy(affs), torch.from_numpy(mask)
    return sample


class PatchStream(IterableDataset):
    """Random augmented training patches with their targets, reproducible per worker and epoch.

    Args:
        volumes: (raw, labels) pairs of equal (Z, Y, X) shape; raw normalised float32.
        patch: (Z, Y, X) patch shape.
        seed: the run's seed.
        augment: augmentation parameters; None = patches as read (plus ``permute`` / ``flip``).
        permute: axis orders drawn by the sampler itself (see ``PatchSampler``); with
            ``augment``, its ``flip_transpose`` usually does this instead.
        flip: random flips by the sampler itself.
        min_labelled: redraw patches with fewer labelled voxels than this fraction.
        max_tries: redraws before accepting a poorly labelled patch.
        patches_per_epoch: patches per epoch over all workers; None = an endless stream.
        boundary_width: erosion width of the boundary targets.
        offsets: also return affinity targets at these offsets.
    """

    def __init__(self, volumes: Volumes, patch: Sequence[int], seed: int, augment: AugmentConfig | None = None,
                 permute: Permute = "none", flip: bool = False, min_labelled: float = 0.5, max_tries: int = 20,
                 patches_per_epoch: int | None = None, boundary_width: int = 1,
                 offsets: Sequence[Sequence[int]] | None = None, affinity_pieces: bool = False):
        super().__init__()
        self.affinity_pieces = affinity_pieces
        self.volumes = volumes
        self.patch = tuple(int(p) for p in patch)
        self.seed = int(seed)
        self.augment = augment
        self.permute = permute
        self.flip = flip
        self.min_labelled = min_labelled
        self.max_tries = max_tries
        self.patches_per_epoch = patches_per_epoch
        self.boundary_width = boundary_width
        self.offsets = None if offsets is None else [tuple(int(o) for o in offset) for offset in offsets]
        self.epoch = 0
        self.sampler(np.random.default_rng(0))  # fail early, in the parent, on volumes that do not fit

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose seeds the next iteration uses (call before ``iter(loader)``)."""
        self.epoch = int(epoch)

    def sampler(self, rng: np.random.Generator) -> PatchSampler:
        """The patch sampler drawing from ``rng``, with the augmentation wired in."""
        augment = read = None
        if self.augment is not None and self.augment.enabled:
            augment, read = build_augmenter(self.augment, self.patch), read_shape(self.augment, self.patch)
        return PatchSampler(self.volumes, self.patch, rng, permute=self.permute, flip=self.flip,
                            min_labelled=self.min_labelled, max_tries=self.max_tries, augment=augment, read=read)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        sampler = self.sampler(np.random.default_rng(worker_seed(self.seed, self.epoch, worker)))
        if self.patches_per_epoch is None:
            while True:
                yield patch_targets(*sampler.sample(), self.boundary_width, self.offsets, self.affinity_pieces)
        share = self.patches_per_epoch // workers + (worker < self.patches_per_epoch % workers)
        for _ in range(share):
            yield patch_targets(*sampler.sample(), self.boundary_width, self.offsets, self.affinity_pieces)


class GridPatches(Dataset):
    """Every patch of a fixed grid over each volume, unaugmented: validation on the same voxels.

    Args:
        volumes: (raw, labels) pairs of equal (Z, Y, X) shape.
        patch: (Z, Y, X) patch shape.
        overlap: voxels shared by neighbouring patches, per axis.
        boundary_width: erosion width of the boundary targets.
        offsets: also return affinity targets at these offsets.
    """

    def __init__(self, volumes: Volumes, patch: Sequence[int], overlap: Sequence[int] = (0, 0, 0),
                 boundary_width: int = 1, offsets: Sequence[Sequence[int]] | None = None):
        self.volumes = volumes
        self.boundary_width = boundary_width
        self.offsets = offsets
        self.items = [(index, box) for index, (raw, _) in enumerate(volumes)
                      for box in grid_patches(raw.shape, patch, overlap)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        index, box = self.items[item]
        raw, labels = self.volumes[index]
        return patch_targets(raw[box], labels[box], self.boundary_width, self.offsets)


def collate_patches(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stacks samples into a batch with numpy, outside torch's thread pool.

    ``torch.stack`` runs in torch's OpenMP pool; when the training step keeps the other cores
    busy, every stack waits for a descheduled thread (milliseconds per call, measured on 2
    loaded cores). A single-threaded numpy stack does not.
    """
    return {key: torch.from_numpy(np.stack([sample[key].numpy() for sample in samples])) for key in samples[0]}


def die_with_trainer(trainer: int, worker: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker is killed when ``trainer`` (its parent) dies.

    torch's own check of the parent runs only between batches and can block on the dead
    parent's queue, so an orphaned worker could outlive the run, holding memory and the
    pipes of whoever waits for the training to end.
    """
    if not die_with_parent(signal.SIGKILL, trainer):
        os._exit(1)  # the trainer died before the signal was armed


def make_loader(dataset: Dataset, batch_size: int, workers: int = 0, prefetch: int = 2) -> DataLoader:
    """A DataLoader whose workers are forked (sharing the volumes) when the platform allows.

    Batches are dicts of stacked tensors: raw (B, 1, Z, Y, X), instances and labels
    (B, Z, Y, X), boundary (B, 1, Z, Y, X).
    """
    options: dict = {"collate_fn": collate_patches}
    if workers > 0:
        options["prefetch_factor"] = prefetch
        options["worker_init_fn"] = functools.partial(die_with_trainer, os.getpid())
        if "fork" in torch.multiprocessing.get_all_start_methods():
            options["multiprocessing_context"] = "fork"
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, **options)
