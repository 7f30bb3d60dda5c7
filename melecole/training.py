"""The training loop: draw patches, step the optimiser, validate now and then.

It takes its collaborators as arguments (model, loss, sampler, optimiser, a validation callable
and a logging callable) and knows nothing of config files, MLflow or checkpoints on disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from melecole.data.sampling import PatchSampler
from melecole.data.targets import affinities as affinity_targets
from melecole.data.targets import boundary_map, patch_instances
from melecole.errors import MelecoleError


class NonFiniteLoss(MelecoleError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""


@dataclass
class TrainingResult:
    """What the loop reports back: the validation history and where it was best."""

    steps: int
    validations: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_score: float = math.inf
    seconds: float = 0.0


def make_batch(sampler: PatchSampler, batch_size: int, device: torch.device,
               offsets: list[tuple[int, int, int]] | None = None) -> dict[str, torch.Tensor]:
    """Samples ``batch_size`` patches and computes their training targets.

    Returns:
        raw (B, 1, Z, Y, X) float32, instances (B, Z, Y, X) int64 (0 = ignore),
        boundary (B, 1, Z, Y, X) float32 and, when ``offsets`` are given, affinities and
        affinity_mask (B, C, Z, Y, X) float32.
    """
    raws, instances, boundaries, affs, masks = [], [], [], [], []
    for _ in range(batch_size):
        raw, labels = sampler.sample()
        raws.append(raw)
        instances.append(patch_instances(labels))
        boundaries.append(boundary_map(labels))
        if offsets:
            target, mask = affinity_targets(labels, offsets)
            affs.append(target)
            masks.append(mask)
    batch = {
        "raw": torch.from_numpy(np.stack(raws)[:, None]).to(device),
        "instances": torch.from_numpy(np.stack(instances).astype(np.int64)).to(device),
        "boundary": torch.from_numpy(np.stack(boundaries)[:, None].astype(np.float32)).to(device),
    }
    if offsets:
        batch["affinities"] = torch.from_numpy(np.stack(affs)).to(device)
        batch["affinity_mask"] = torch.from_numpy(np.stack(masks)).to(device)
    return batch


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[dict, dict], dict],
    sampler: PatchSampler,
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int,
    device: torch.device,
    log_every: int,
    val_every: int,
    validate: Callable[[torch.nn.Module], dict] | None = None,
    on_log: Callable[[dict, int], None] | None = None,
    on_best: Callable[[int, dict, torch.nn.Module], None] | None = None,
    progress: Callable[[int, dict], None] | None = None,
    ema_decay: float = 0.0,
    offsets: list[tuple[int, int, int]] | None = None,
) -> TrainingResult:
    """Runs ``steps`` optimiser steps.

    ``validate(model)`` returns metrics including ``vi_split`` and ``vi_merge``; it runs every
    ``val_every`` steps and after the last, and ``on_best(step, metrics, model)`` is called
    whenever their sum improves, so the caller can keep the best weights. With ``ema_decay`` > 0
    an exponential moving average of the weights is what gets validated and kept: single
    checkpoints of a short CPU training jump around, their running average much less.
    ``offsets`` adds affinity targets to each batch, for a model with an affinity head.

    Raises:
        NonFiniteLoss: when any loss term is NaN or infinite; nothing is stepped with it.
    """
    result = TrainingResult(steps=steps)
    ema_model = None
    if ema_decay > 0:
        ema_model = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    start = time.perf_counter()
    running: dict[str, float] = {}
    for step in range(1, steps + 1):
        model.train()
        batch = make_batch(sampler, batch_size, device, offsets)
        outputs = model(batch["raw"])
        terms = loss_fn(outputs, batch)
        if not all(torch.isfinite(value).all() for value in terms.values()):
            described = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise NonFiniteLoss(f"non-finite loss at step {step} ({described}); training stopped")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if ema_model is not None:
            ema_model.update_parameters(model)
        for key, value in terms.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        if step % log_every == 0 or step == steps:
            count = log_every if step % log_every == 0 else step % log_every
            averaged = {f"train_{key}": value / count for key, value in running.items()}
            averaged["patches_per_second"] = step * batch_size / (time.perf_counter() - start)
            running = {}
            if on_log:
                on_log(averaged, step)
            if progress:
                progress(step, averaged)
        if validate is not None and (step % val_every == 0 or step == steps):
            evaluated = ema_model.module if ema_model is not None else model
            metrics = validate(evaluated)
            metrics["step"] = step
            result.validations.append(metrics)
            if on_log:
                on_log({f"val_{k}": v for k, v in metrics.items() if k != "step"}, step)
            score = metrics["vi_split"] + metrics["vi_merge"]
            if score < result.best_score:
                result.best_score, result.best_step = score, step
                if on_best:
                    on_best(step, metrics, evaluated)
    result.seconds = time.perf_counter() - start
    return result
