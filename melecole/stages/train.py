"""train: prepared volumes + params -> the checkpoint with the best validation VI, tracked in MLflow."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import numpy as np
import torch

from melecole.checkpoint import save_checkpoint
from melecole.config import Params, params_as_dict
from melecole.data.augment import build_augmenter, read_shape
from melecole.data.normalize import normalize_raw
from melecole.data.sampling import PatchSampler
from melecole.errors import MelecoleError
from melecole.inference.volume import predict_volume
from melecole.io import atomic_output, check_same_shape, read_volumes
from melecole.losses import EmbeddingLoss, MultitaskLoss
from melecole.models import build_model
from melecole.stages.segment import score_on
from melecole.tracking import Tracker
from melecole.training import train_loop


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise MelecoleError(f"train.device '{name}': {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MelecoleError(f"train.device '{name}': CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> np.random.Generator:
    """Seeds python, torch and returns the numpy Generator the data pipeline draws from."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(seed)


def load_labelled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads datasets ``raw`` and ``labels`` of a prepared file, raw normalised to float32."""
    volumes = read_volumes(path, {"raw": 3, "labels": 3})
    check_same_shape(path, volumes)
    labels = volumes["labels"]
    if not np.issubdtype(labels.dtype, np.integer):
        raise MelecoleError(f"{path}:labels has dtype {labels.dtype}; integer labels are required")
    return normalize_raw(volumes["raw"], f"{path}:raw"), labels.astype(np.uint64)


def training_files(data_dir: str | Path) -> tuple[list[Path], Path]:
    """``train*.h5`` and ``val.h5`` of a prepared folder."""
    data_dir = Path(data_dir)
    train = sorted(data_dir.glob("train*.h5"))
    val = data_dir / "val.h5"
    if not train:
        raise MelecoleError(f"{data_dir}: no train*.h5 files (run `melecole prepare` first)")
    if not val.is_file():
        raise MelecoleError(f"{val}: validation volume not found (run `melecole prepare` first)")
    return train, val


def validation_scores(params: Params, model: torch.nn.Module, raw: np.ndarray, labels: np.ndarray,
                      augment: str = "none") -> dict:
    """Segments the validation volume with the configured method and scores it.

    For the agglomeration without a fixed threshold, the score is that of the best candidate
    threshold, which is returned under ``threshold``.
    """
    loss, cfg = params.train.loss, params.predict
    predictions = predict_volume(model, raw, cfg.patch, cfg.overlap, cfg.batch_size, params.segment.offsets,
                                 loss.delta_d, loss.norm, augment)
    return score_on(params.segment, predictions, labels, params.seed)


def _progress(total: int):
    def report(step: int, figures: dict) -> None:
        print(f"step {step}/{total}  loss {figures['train_loss']:.4f}  "
              f"{figures['patches_per_second']:.2f} patches/s", file=sys.stderr, flush=True)
    return report


def train(params: Params, train_files: list[Path], val_file: Path, checkpoint: str | Path,
          run_file: str | Path | None = None) -> dict:
    """Trains a model and writes the checkpoint with the best validation VI sum.

    Returns:
        a summary: best step, its validation metrics, wall time.
    """
    cfg = params.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = seed_everything(params.seed)
    device = resolve_device(cfg.device)
    volumes = [load_labelled(path) for path in train_files]
    val_raw, val_labels = load_labelled(val_file)
    augment = cfg.augment
    sampler = PatchSampler(volumes, cfg.patch, rng, permute="none", flip=False, min_labelled=cfg.min_labelled,
                           augment=build_augmenter(augment, cfg.patch) if augment.enabled else None,
                           read=read_shape(augment, cfg.patch) if augment.enabled else None)
    model_args = params.model.model_dump(mode="json", exclude={"name", "affinity_head"})
    offsets = [tuple(o) for o in params.segment.offsets] if params.model.affinity_head else None
    model_args["affinity_channels"] = len(offsets) if offsets else 0
    model = build_model(params.model.name, **model_args).to(device)
    divisor = tuple(model.divisor)
    for name, shape in (("train.patch", cfg.patch), ("predict.patch", params.predict.patch)):
        if any(s % d for s, d in zip(shape, divisor)):
            raise MelecoleError(f"{name} {tuple(shape)} must be divisible by the model's divisor {divisor}")
    loss = cfg.loss
    loss_fn = MultitaskLoss(EmbeddingLoss(delta_v=loss.delta_v, delta_d=loss.delta_d, alpha=loss.alpha,
                                          beta=loss.beta, gamma=loss.gamma, norm=loss.norm,
                                          boundary_weight=loss.boundary_weight), loss.affinity_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    params_dict = params_as_dict(params)
    tracker = Tracker.start(params.tracking.experiment, params_dict, enabled=params.tracking.enabled,
                            run_name=f"{params.data.dataset}-{cfg.steps}steps")
    best: dict = {}

    def keep_best(step: int, metrics: dict, evaluated: torch.nn.Module) -> None:
        best.update(step=step, metrics=dict(metrics), state=copy.deepcopy(evaluated.state_dict()))

    try:
        result = train_loop(model, loss_fn, sampler, optimizer, cfg.steps, cfg.batch_size, device,
                            cfg.log_every, cfg.val_every,
                            lambda m: validation_scores(params, m, val_raw, val_labels),
                            on_log=tracker.log_metrics, on_best=keep_best, progress=_progress(cfg.steps),
                            ema_decay=cfg.ema_decay, offsets=offsets)
    except BaseException:
        tracker.finish("FAILED")
        raise
    model.load_state_dict(best["state"])
    # The final score uses the predict stage's settings (test-time augmentation included), so the
    # threshold chosen here is the one that fits what `segment` will see.
    final = validation_scores(params, model, val_raw, val_labels, params.predict.augment)
    extra = {"best_step": best["step"], "val_vi_split": final["vi_split"], "val_vi_merge": final["vi_merge"],
             "val_arand": final["arand"]}
    if "threshold" in final:
        extra["agglomeration_threshold"] = final["threshold"]
    summary = {"best_step": best["step"], "val": final, "seconds": result.seconds, "device": str(device)}
    save_checkpoint(checkpoint, model, params_dict, extra=extra)
    tracker.log_metrics({"best_step": best["step"], "train_seconds": result.seconds,
                         **{f"final_val_{k}": v for k, v in final.items()}})
    tracker.log_artifact(checkpoint, "checkpoint")
    if run_file is not None:
        with atomic_output(run_file) as tmp:
            tmp.write_text((tracker.run_id or "") + "\n")
    return summary
