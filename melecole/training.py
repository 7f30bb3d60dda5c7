"""The training loop: draw patches, step the optimiser, validate now and then.

It takes its collaborators as arguments (model, loss, sampler, optimiser, a validation callable,
a logging callable and a checkpoint callable) and knows nothing of config files, MLflow or files
on disk. The model may be wrapped in ``DistributedDataParallel``: every rank runs this loop on
its own patches, gradients are averaged by DDP, and only the rank given ``validate`` validates.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from melecole import distributed
from melecole.data.feed import LoaderFeed
from melecole.data.pairs import ViewSampler, VoxelPairs
from melecole.data.sampling import PatchSampler
from melecole.data.targets import affinities as affinity_targets
from melecole.data.targets import boundary_map, patch_instances
from melecole.errors import MelecoleError
from melecole.losses.objective import ContrastivePlan


class NonFiniteLoss(MelecoleError):
    """The loss became NaN or infinite; the message names the step and the loss terms.

    Attributes:
        step: the optimiser step (1-based) whose loss was not finite.
        terms: the loss terms of this rank at that step, as floats.
        raw: (B, 1, Z, Y, X) the patches of this rank that produced it, on the CPU; None when
            this rank's loss was finite and another rank's was not.
    """

    def __init__(self, message: str, step: int = 0, terms: dict[str, float] | None = None,
                 raw: torch.Tensor | None = None):
        super().__init__(message)
        self.step = step
        self.terms = terms or {}
        self.raw = raw

    @property
    def here(self) -> bool:
        """Whether this rank's own loss was the non-finite one."""
        return self.raw is not None


@dataclass
class TrainingResult:
    """What the loop reports back, and everything of its own it needs to resume exactly.

    Attributes:
        steps: optimiser steps of the whole run.
        validations: one dict of validation metrics per validation, with its ``step``.
        best_step: the step with the lowest validation VI sum so far.
        best_score: that VI sum.
        seconds: training wall time, summed over resumed parts.
        step: optimiser steps completed.
        running: sums of the logged figures since the last log; ``running_count`` steps of them.
    """

    steps: int
    validations: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_score: float = math.inf
    seconds: float = 0.0
    step: int = 0
    running: dict[str, float] = field(default_factory=dict)
    running_count: int = 0

    def as_dict(self) -> dict:
        """Plain values only, for a ``weights_only`` checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingResult:
        return cls(**values)


@dataclass
class StepOptions:
    """How one optimiser step is taken.

    Attributes:
        accumulate: micro-batches whose gradients add up to one step (each loss divided by it).
        amp_dtype: autocast dtype of the forward pass (``torch.bfloat16`` / ``torch.float16``),
            None for full precision. The loss is always computed in float32.
        channels_last: feed the model channels_last_3d input (the model should be converted too).
        clip_grad_norm: clip the global gradient norm to this; 0 = measure it only.
        scheduler: stepped after every optimiser step.
        scaler: a ``GradScaler`` for float16; None otherwise.
        checkpoint_every: call ``on_checkpoint`` every this many steps and after the last; 0 = never.
        affinity_pieces: affinity targets from the patch's connected pieces, as the embedding's
            instances, instead of its labels (``train.loss.affinity_targets``).
        contrastive: the contrastive phases (model = :class:`~melecole.models.moco.MoCo`, sampler
            a :class:`~melecole.data.pairs.ViewSampler`, ``loss_fn(outputs, batch, step)``); None
            for supervised training.
    """

    accumulate: int = 1
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    clip_grad_norm: float = 0.0
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    checkpoint_every: int = 0
    contrastive: ContrastivePlan | None = None
    affinity_pieces: bool = False


def make_batch(sampler: PatchSampler | LoaderFeed | ViewSampler, batch_size: int, device: torch.device,
               offsets: list[tuple[int, int, int]] | None = None,
               affinity_pieces: bool = False) -> dict[str, torch.Tensor]:
    """Samples ``batch_size`` patches and computes their training targets.

    A :class:`~melecole.data.feed.LoaderFeed` (loader workers) already delivers whole batches
    with their targets, built the same way. A :class:`~melecole.data.pairs.ViewSampler` gives
    two views per sample: the targets are view a's, and the batch also carries view b and the
    voxel pairs for the contrastive loss.

    Returns:
        raw (B, 1, Z, Y, X) float32, instances (B, Z, Y, X) int64 (0 = ignore), labels
        (B, Z, Y, X) int64 (the ground truth the instances were cut from), boundary
        (B, 1, Z, Y, X) float32 and, when ``offsets`` are given, affinities and
        affinity_mask (B, C, Z, Y, X) float32. From a ViewSampler also view (B, 1, Z, Y, X),
        index / view_index (B, N) int64 flat voxel indices, pair_labels (B, N) int64 (one id per
        neuron and sample, unique across the batch), pair_identity (B, N, 2) int64 (the training
        volume's index and the label id: one neuron across samples and batches) and valid (B, N) bool.
    """
    if isinstance(sampler, LoaderFeed):
        return sampler.next_batch(device)
    raws, instances, labelled, boundaries, affs, masks = [], [], [], [], [], []
    views, pair_sets = [], []
    for _ in range(batch_size):
        if isinstance(sampler, ViewSampler):
            pair, pairs = sampler.sample()
            raw, labels = pair.raw[0], pair.labels[0]
            views.append(pair.raw[1])
            pair_sets.append(pairs)
        else:
            raw, labels = sampler.sample()
        raws.append(raw)
        instances.append(patch_instances(labels))
        labelled.append(labels)
        boundaries.append(boundary_map(labels))
        if offsets:
            target, mask = affinity_targets(instances[-1] if affinity_pieces else labels, offsets)
            affs.append(target)
            masks.append(mask)
    batch = {
        "raw": torch.from_numpy(np.stack(raws)[:, None]).to(device),
        "instances": torch.from_numpy(np.stack(instances).astype(np.int64)).to(device),
        "labels": torch.from_numpy(np.stack(labelled).astype(np.int64)).to(device),
        "boundary": torch.from_numpy(np.stack(boundaries)[:, None].astype(np.float32)).to(device),
    }
    if offsets:
        batch["affinities"] = torch.from_numpy(np.stack(affs)).to(device)
        batch["affinity_mask"] = torch.from_numpy(np.stack(masks)).to(device)
    if views:
        batch.update(_pair_tensors(views, pair_sets, device))
    return batch


def _pair_tensors(views: list[np.ndarray], pair_sets: list[VoxelPairs], device: torch.device) -> dict:
    # One id per (sample, neuron): the same label id in two samples may be two different neurons.
    labels = np.stack([pairs.labels for pairs in pair_sets])
    ids = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    ids = ids + np.arange(len(pair_sets))[:, None] * (ids.max() + 1)
    return {
        "view": torch.from_numpy(np.stack(views)[:, None]).to(device),
        "index": torch.from_numpy(np.stack([pairs.index_a for pairs in pair_sets])).to(device),
        "view_index": torch.from_numpy(np.stack([pairs.index_b for pairs in pair_sets])).to(device),
        "pair_labels": torch.from_numpy(ids.astype(np.int64)).to(device),
        # uint64 label ids reinterpreted as int64: equality, all that identities are used for, is kept.
        "pair_identity": torch.from_numpy(np.stack([np.stack([np.full(pairs.labels.shape, pairs.volume, np.int64),
                                                              pairs.labels.astype(np.int64)], axis=-1)
                                                    for pairs in pair_sets])).to(device),
        "valid": torch.from_numpy(np.stack([pairs.valid for pairs in pair_sets])).to(device),
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers."""
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)


def _check_finite(terms: dict[str, torch.Tensor], step: int, raw: torch.Tensor) -> None:
    # Every rank takes part, so all stop together instead of one waiting for the others forever.
    finite = all(bool(torch.isfinite(value).all()) for value in terms.values())
    if distributed.any_rank(not finite):
        values = {key: float(value.detach()) for key, value in terms.items()}
        if finite:
            raise NonFiniteLoss(f"non-finite loss at step {step} on another rank; training stopped", step, values)
        described = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLoss(f"non-finite loss at step {step} ({described}); training stopped", step, values,
                            raw.detach().cpu())


def optimizer_step(model: torch.nn.Module, loss_fn: Callable[[dict, dict], dict],
                   sampler: PatchSampler | LoaderFeed,
                   optimizer: torch.optim.Optimizer, batch_size: int, device: torch.device,
                   offsets: list[tuple[int, int, int]] | None, options: StepOptions,
                   step: int) -> tuple[dict[str, float], float, float]:
    """One optimiser step over ``options.accumulate`` micro-batches of ``batch_size`` patches.

    Returns:
        (the loss terms averaged over the micro-batches, the gradient norm before clipping, the
        learning rate used).

    Raises:
        NonFiniteLoss: before any backward pass with a non-finite loss; nothing is stepped.
    """
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    ddp = isinstance(model, DistributedDataParallel)
    for micro in range(options.accumulate):
        batch = make_batch(sampler, batch_size, device, offsets, options.affinity_pieces)
        raw = batch["raw"]
        if options.channels_last:
            raw = raw.contiguous(memory_format=torch.channels_last_3d)
        # DDP all-reduces gradients only on the last micro-batch of a step.
        last = micro == options.accumulate - 1
        plan = options.contrastive
        contrast = plan is not None and plan.contrastive(step) and "view" in batch
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            with torch.autocast(device.type, dtype=options.amp_dtype, enabled=options.amp_dtype is not None):
                if contrast:
                    outputs = model(raw, batch["view"], batch["index"], batch["view_index"], batch["valid"],
                                    batch.get("pair_identity"))
                else:
                    outputs = model(raw)
            # Only floating outputs: integer ones (the queue's identities) must stay exact.
            outputs = {key: value.float() if value.is_floating_point() else value for key, value in outputs.items()}
            terms = loss_fn(outputs, batch, step) if plan is not None else loss_fn(outputs, batch)
            _check_finite(terms, step, batch["raw"])
            loss = terms["loss"] / options.accumulate if options.accumulate > 1 else terms["loss"]
            (options.scaler.scale(loss) if options.scaler is not None else loss).backward()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) / options.accumulate
    if options.scaler is not None:
        options.scaler.unscale_(optimizer)
    parameters = [p for p in model.parameters() if p.grad is not None]
    if options.clip_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, options.clip_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    lr = float(optimizer.param_groups[0]["lr"])
    if options.scaler is not None:
        options.scaler.step(optimizer)
        options.scaler.update()
    else:
        optimizer.step()
    if options.scheduler is not None:
        options.scheduler.step()
    return sums, float(norm), lr


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[dict, dict], dict],
    sampler: PatchSampler | LoaderFeed,
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int,
    device: torch.device,
    log_every: int,
    val_every: int,
    validate: Callable[[torch.nn.Module], dict] | None = None,
    on_log: Callable[[dict, int], None] | None = None,
    on_best: Callable[[int, dict, torch.nn.Module], None] | None = None,
    progress: Callable[[int, dict | None], None] | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    offsets: list[tuple[int, int, int]] | None = None,
    options: StepOptions | None = None,
    state: TrainingResult | None = None,
    on_checkpoint: Callable[[int, TrainingResult], None] | None = None,
) -> TrainingResult:
    """Runs optimiser steps up to ``steps``, from ``state.step`` when resuming.

    ``validate(model)`` returns metrics including ``vi_split`` and ``vi_merge``; it runs every
    ``val_every`` steps and after the last, and ``on_best(step, metrics, model)`` is called
    whenever their sum improves, so the caller can keep the best weights. With ``ema`` it is the
    moving average of the weights that gets validated and kept: single checkpoints of a short
    CPU training jump around, their running average much less. ``offsets`` adds affinity
    targets to each batch, for a model with an affinity head.

    Every ``log_every`` steps (and after the last) the figures averaged since the previous log
    (``train_<loss term>``, ``train_grad_norm``), averaged over the ranks too, go to
    ``on_log(figures, step)`` with ``lr`` and ``patches_per_second`` (all ranks). ``progress(step,
    figures or None)`` is called after every step. ``on_checkpoint(step, state)`` runs on every
    rank every ``options.checkpoint_every`` steps and after the last, after that step's
    validation; ``state`` then holds all the loop needs to continue.

    Under DDP every rank calls this with its own sampler; pass ``validate``, ``on_log`` and
    ``on_best`` on rank 0 only. The others wait for rank 0 at a barrier after each validation.

    Raises:
        NonFiniteLoss: when any loss term is NaN or infinite on any rank; nothing is stepped with it.
    """
    options = options or StepOptions()
    result = state if state is not None else TrainingResult(steps=steps)
    result.steps = steps
    raw_model = unwrap(model)
    patches_per_step = batch_size * options.accumulate * distributed.world_size()
    first_step, start, seconds_before = result.step, time.perf_counter(), result.seconds
    for step in range(result.step + 1, steps + 1):
        model.train()
        terms, grad_norm, lr = optimizer_step(model, loss_fn, sampler, optimizer, batch_size, device, offsets,
                                              options, step)
        if ema is not None:
            ema.update_parameters(raw_model)
        result.step = step
        for key, value in {**terms, "grad_norm": grad_norm}.items():
            result.running[key] = result.running.get(key, 0.0) + value
        result.running_count += 1
        figures = None
        if step % log_every == 0 or step == steps:
            averaged = distributed.mean_over_ranks({k: v / result.running_count for k, v in result.running.items()})
            figures = {f"train_{key}": value for key, value in averaged.items()}
            figures["lr"] = lr
            figures["patches_per_second"] = (step - first_step) * patches_per_step / (time.perf_counter() - start)
            result.running, result.running_count = {}, 0
            if on_log:
                on_log(figures, step)
        if progress:
            progress(step, figures)
        if step % val_every == 0 or step == steps:
            if validate is not None:
                _validate(validate, ema.module if ema is not None else raw_model, step, result, on_log, on_best)
            distributed.barrier()
        result.seconds = seconds_before + time.perf_counter() - start
        if on_checkpoint and options.checkpoint_every and (step % options.checkpoint_every == 0 or step == steps):
            on_checkpoint(step, result)
    result.seconds = seconds_before + time.perf_counter() - start
    return result


def _validate(validate: Callable[[torch.nn.Module], dict], evaluated: torch.nn.Module, step: int,
              result: TrainingResult, on_log: Callable[[dict, int], None] | None,
              on_best: Callable[[int, dict, torch.nn.Module], None] | None) -> None:
    metrics = {key: float(value) for key, value in validate(evaluated).items()}
    metrics["step"] = step
    result.validations.append(metrics)
    if on_log:
        on_log({f"val_{k}": v for k, v in metrics.items() if k != "step"}, step)
    score = metrics["vi_split"] + metrics["vi_merge"]
    if score < result.best_score:
        result.best_score, result.best_step = score, step
        if on_best:
            on_best(step, metrics, evaluated)
