"""train: prepared volumes + params -> the checkpoint with the best validation VI, tracked in MLflow.

Runs alone or as one rank of a torchrun job (DistributedDataParallel). Rank 0 validates, keeps
the best weights, writes the periodic checkpoints ``checkpoints/<stem>-step-NNNNNN.pt`` beside
the output, the MLflow run and finally the output itself; a run interrupted at any point
continues from its newest periodic checkpoint (see :mod:`melecole.resume`).
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from melecole import distributed, rng_state
from melecole.checkpoint import (load_initial_weights, nonfinite_path, periodic_path, prune_checkpoints,
                                 remove_checkpoints, save_checkpoint, save_state)
from melecole.config import Params, params_as_dict
from melecole.data.augment import build_augmenter, read_shape
from melecole.data.normalize import normalize_raw
from melecole.data.feed import LoaderFeed
from melecole.data.loader import PatchStream
from melecole.data.pairs import ViewSampler
from melecole.data.sampling import PatchSampler
from melecole.data.views import views_read_shape
from melecole.distributed import DistContext
from melecole.errors import MelecoleError
from melecole.inference.device import resolve_device  # noqa: F401 - re-exported for callers of this module
from melecole.inference.encoding import round_trip
from melecole.inference.volume import count_tiles, predict_volume
from melecole.io import atomic_output, check_same_shape, read_volumes
from melecole.losses import EmbeddingLoss, MultitaskLoss
from melecole.losses.objective import ContrastiveObjective, ContrastivePlan
from melecole.models import build_model
from melecole.models.moco import MoCo
from melecole.progress import MetricBuffer, ProgressBar, work_bar
from melecole.resume import ResumeMode, TrainingParts, collect, find_resumable, fingerprint, for_other_ranks, restore
from melecole.schedule import build_scheduler
from melecole.stages.calibration import calibrate_variants
from melecole.stages.segment import Labelled, run_method, score_on
from melecole.stages.variants import checkpoint_facts, validated_method, variant_name
from melecole.figures import result_image
from melecole.plots import CurveFiles
from melecole.tracking import Tracker, run_name, run_tags
from melecole.training import NonFiniteLoss, StepOptions, TrainingResult, make_ema, train_loop


def seed_everything(seed: int, rank: int = 0) -> np.random.Generator:
    """Seeds python and torch; returns the numpy Generator of this rank's data pipeline.

    Every rank draws different patches, reproducibly: its generator is seeded from
    ``SeedSequence([seed, rank])``. Torch is seeded alike on all ranks, so the model starts the
    same everywhere (DDP also copies rank 0's weights).
    """
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(np.random.SeedSequence([seed, rank]))


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``: None on the CPU and for ``off``."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def load_labelled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads datasets ``raw`` and ``labels`` of a prepared file, raw normalised to float32."""
    volumes = read_volumes(path, {"raw": 3, "labels": 3})
    check_same_shape(path, volumes)
    labels = volumes["labels"]
    if not np.issubdtype(labels.dtype, np.integer):
        raise MelecoleError(f"{path}:labels has dtype {labels.dtype}; integer labels are required")
    return normalize_raw(volumes["raw"], f"{path}:raw"), labels.astype(np.uint64)


def validation_predictions(params: Params, model: torch.nn.Module, volumes: list[tuple[np.ndarray, np.ndarray]],
                           augment: str = "none", embedding: bool = False) -> list[Labelled]:
    """``(predictions, labels)`` of each validation volume, quantised as predict stores them, so
    thresholds and biases are chosen on what segment will read; ``embedding``: the first
    volume's predictions also hold the embedding (for its picture)."""
    loss, cfg = params.train.loss, params.predict
    with work_bar(sum(count_tiles(raw.shape, cfg.patch, cfg.overlap) for raw, _ in volumes), "validate", "tile") as bar:
        return [(round_trip(predict_volume(model, raw, cfg.patch, cfg.overlap, cfg.batch_size,
                                           params.segment.offsets, loss.delta_d, loss.norm, augment, cfg.affinity,
                                           embedding=embedding and index == 0, on_tiles=bar.update)),
                 labels)
                for index, (raw, labels) in enumerate(volumes)]


def final_calibration(params: Params, model: torch.nn.Module,
                      volumes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict, dict]:
    """Every variant of ``segment.choices`` calibrated on the validation volumes with the predict
    stage's settings (test-time augmentation included), and the validation metrics of the main
    method (``auto``: the best variant) with its knob under ``threshold`` or ``bias``."""
    predicted = validation_predictions(params, model, volumes, params.predict.augment)
    config = params.segment
    # The configured agglomeration is calibrated whatever the choices: it is what `auto` falls
    # back to, and its threshold is the checkpoint's agglomeration_threshold.
    configured = [variant_name("agglomeration", config)] + ([] if config.method == "auto" else [variant_name(config.method, config)])
    calibration = calibrate_variants(config, predicted, params.seed, also=configured)
    main = calibration["choice"] if config.method == "auto" else variant_name(config.method, config)
    if main in calibration["variants"]:
        return calibration, {**calibration["variants"][main], "method": main}
    return calibration, {**score_on(config, predicted, params.seed), "method": main}


def validation_scores(params: Params, model: torch.nn.Module, volumes: list[tuple[np.ndarray, np.ndarray]],
                      augment: str = "none", picture: Callable[[np.ndarray], None] | None = None) -> dict:
    """Segments the validation volumes ``(raw, labels)`` with the configured method and scores
    them pooled, as one validation set.

    For the agglomeration without a fixed threshold, the score is that of the best candidate
    threshold, which is returned under ``threshold``. With ``picture``, it receives the
    :func:`melecole.figures.result_image` of the first volume's middle slice, segmented as scored.
    """
    predicted = validation_predictions(params, model, volumes, augment, embedding=picture is not None)
    scores = score_on(params.segment, predicted, params.seed)
    if picture is not None:
        predictions, labels = predicted[0]
        threshold = scores.get("threshold", params.segment.agglomeration.threshold)
        segmentation = run_method(validated_method(params.segment), params.segment, predictions, threshold,
                                  params.seed, bias=params.segment.mws_bias or 0.0)
        picture(result_image(volumes[0][0], labels, segmentation, predictions.get("boundary"),
                             predictions.get("embedding")))
    return scores


def segmentation_network(model: torch.nn.Module) -> torch.nn.Module:
    """The network that segments: a MoCo wrapper's online encoder (its momentum copy and queue
    serve training only), or the model itself."""
    return model.encoder if isinstance(model, MoCo) else model


def _sampler(params: Params, volumes: list[tuple[np.ndarray, np.ndarray]],
             rng: np.random.Generator) -> PatchSampler | ViewSampler:
    """Augmented patches; for contrastive training, two views of each region with voxel pairs."""
    cfg, augment = params.train, params.train.augment
    augmenter = build_augmenter(augment, cfg.patch) if augment.enabled else None
    contrastive = cfg.contrastive
    if contrastive.mode == "supervised":
        return PatchSampler(volumes, cfg.patch, rng, permute="none", flip=False, min_labelled=cfg.min_labelled,
                            augment=augmenter, read=read_shape(augment, cfg.patch) if augmenter else None)
    region = views_read_shape(cfg.patch, contrastive.max_offset)
    return ViewSampler(volumes, cfg.patch, contrastive.max_offset, contrastive.pairs, rng,
                       geometry=augmenter.geometry if augmenter else None,
                       read=read_shape(augment, region) if augmenter else None,
                       intensity=augmenter.intensity if augmenter else None, min_labelled=cfg.min_labelled)


def build_model_for(params: Params, device: torch.device, ctx: DistContext) -> tuple[torch.nn.Module, list | None]:
    """The model of ``params`` on ``device`` and the offsets of the affinity targets its batches
    need (None: no affinity head and no loss on the embedding's affinities)."""
    cfg = params.train
    model_args = params.model.model_dump(mode="json", exclude={"name", "affinity_head"})
    # Affinity targets go into the batches for the affinity head and for a loss on the
    # embedding's own affinities; only the head adds output channels.
    wants_targets = params.model.affinity_head or cfg.loss.embedding_affinity_weight > 0
    offsets = [tuple(o) for o in params.segment.offsets] if wants_targets else None
    model_args["affinity_channels"] = len(offsets) if params.model.affinity_head else 0
    model = build_model(params.model.name, **model_args)
    divisor = tuple(model.divisor)
    for name, shape in (("train.patch", cfg.patch), ("predict.patch", params.predict.patch)):
        if any(s % d for s, d in zip(shape, divisor)):
            raise MelecoleError(f"{name} {tuple(shape)} must be divisible by the model's divisor {divisor}")
    if params.model.norm == "batch" and ctx.distributed and device.type == "cuda":
        # Batch statistics over the global batch; PyTorch's SyncBatchNorm runs on GPUs only, so
        # on the CPU each rank normalises its own batch and DDP copies rank 0's running stats.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model, offsets


def supervised_loss(params: Params, offsets: list | None) -> MultitaskLoss:
    """The supervised objective of ``train.loss``; ``offsets`` are the batches' affinity targets'
    (from :func:`build_model_for`), None when the batches carry none."""
    loss = params.train.loss
    return MultitaskLoss(EmbeddingLoss(delta_v=loss.delta_v, delta_d=loss.delta_d, alpha=loss.alpha,
                                       beta=loss.beta, gamma=loss.gamma, norm=loss.norm,
                                       boundary_weight=loss.boundary_weight, inter_pairs=loss.inter_pairs),
                         loss.affinity_weight, loss.embedding_affinity_weight, offsets)


def _parts(params: Params, model: torch.nn.Module, device: torch.device, rng: np.random.Generator,
           ctx: DistContext) -> TrainingParts:
    cfg = params.train
    # A MoCo wrapper's momentum network is never trained by gradients.
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.steps, cfg.warmup_steps, cfg.min_lr_factor,
                                cfg.restart_steps, cfg.restart_mult)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg.amp, device) == torch.float16)
    # Only rank 0 validates, so only it keeps the moving average.
    ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay > 0 and ctx.is_main else None
    return TrainingParts(model, optimizer, scheduler, scaler, rng, ema)


def _resume(parts: TrainingParts, ctx: DistContext, checkpoint: Path, current: dict, mode: ResumeMode,
            best: dict) -> tuple[TrainingResult | None, str | None]:
    """Rank 0 picks the state (or none) and shares it; every rank restores its part."""
    state, note = find_resumable(checkpoint, current, mode) if ctx.is_main else (None, None)
    shared = distributed.broadcast_object(for_other_ranks(state) if state is not None else None)
    if ctx.is_main and note:
        print(f"melecole train: {note}", file=sys.stderr, flush=True)
    if shared is None:
        return None, None
    if ctx.is_main:
        best.update(state["best"])
        shared = state
    return restore(parts, shared, ctx.rank), state.get("run_id") if ctx.is_main else None


def plots_folder(checkpoint: str | Path) -> Path:
    """Where training writes its curves for ``dvc plots``: ``plots/`` beside the checkpoint."""
    return Path(checkpoint).parent / "plots"


def _tracker(params: Params, params_dict: dict, ctx: DistContext, run_id: str | None, step: int) -> Tracker:
    if not ctx.is_main or not params.tracking.enabled:
        return Tracker(False)
    if run_id:
        tracker = Tracker.resume(run_id)
        # The resumed run now belongs to this command (e.g. the DVC experiment that resumed it).
        tracker.set_tags({"resumed_at_step": step, **run_tags()})
        return tracker
    return Tracker.start(params.tracking.experiment, params_dict, run_name=run_name(params.data.dataset, params.train.steps))


def train(params: Params, train_files: list[Path], val_files: list[Path], checkpoint: str | Path,
          run_file: str | Path | None = None, resume: ResumeMode = "auto",
          validation_log: str | Path | None = None) -> dict | None:
    """Trains a model and writes the checkpoint with the best validation VI sum.

    Alone or as one rank of a torchrun job; periodic checkpoints make it resumable (``resume``:
    ``"auto"`` continues a compatible interrupted run, ``"always"`` insists, ``"never"`` starts
    afresh). With ``validation_log``, rank 0 appends one JSON line per validation (``step`` and
    the validation metrics) as soon as it is scored, for a watcher such as a hyper-parameter
    search that stops unpromising runs.

    Returns:
        on rank 0, a summary: best step, its validation metrics, wall time, device, processes,
        the step it resumed from; None on the other ranks.
    """
    cfg = params.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx, device = distributed.init(resolve_device(cfg.device), cfg.dist_timeout)
    try:
        return _train(params, ctx, device, train_files, val_files, Path(checkpoint), run_file, resume, validation_log)
    finally:
        distributed.teardown()


def _train(params: Params, ctx: DistContext, device: torch.device, train_files: list[Path], val_files: list[Path],
           checkpoint: Path, run_file: str | Path | None, resume: ResumeMode,
           validation_log: str | Path | None = None) -> dict | None:
    cfg = params.train
    rng = seed_everything(params.seed, ctx.rank)
    volumes = [load_labelled(path) for path in train_files]
    validation = [load_labelled(path) for path in val_files]
    sampler = _sampler(params, volumes, rng)
    model, offsets = build_model_for(params, device, ctx)
    if cfg.init_from:
        # Fine-tuning; a resumed run then restores its own later weights over these.
        load_initial_weights(model, params.model.name, cfg.init_from)
    contrastive = cfg.contrastive
    plan = None
    trained = model
    if contrastive.mode != "supervised":
        plan = ContrastivePlan(contrastive.mode, contrastive.weight, contrastive.pretrain_steps)
        trained = MoCo(model, params.model.embedding_dim, contrastive.projection_dim, contrastive.queue_size,
                       contrastive.momentum).to(device)
    parts = _parts(params, trained, device, rng, ctx)
    loss_fn = supervised_loss(params, offsets)
    if plan is not None:
        loss_fn = ContrastiveObjective(loss_fn, contrastive.temperature, plan)
    params_dict = params_as_dict(params)
    current = fingerprint(params_dict, [*train_files, *val_files], ctx.world_size)
    best: dict = {}
    state, run_id = _resume(parts, ctx, checkpoint, current, resume, best)
    resumed_from = state.step if state is not None else 0
    batches = sampler
    if cfg.workers > 0:
        rank_seed = int(np.random.SeedSequence([params.seed, ctx.rank]).generate_state(1)[0])
        stream = PatchStream(volumes, cfg.patch, rank_seed, augment=cfg.augment, min_labelled=cfg.min_labelled,
                             offsets=offsets, affinity_pieces=cfg.loss.affinity_targets == "pieces")
        batches = LoaderFeed(stream, cfg.batch_size, cfg.workers, cfg.checkpoint_every or None, resumed_from,
                             cfg.accumulate)
    network = trained
    if ctx.distributed:
        # After contrastive pre-training the projection head takes no part any more.
        network = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=contrastive.mode == "pretrain")
    options = StepOptions(accumulate=cfg.accumulate, amp_dtype=amp_dtype(cfg.amp, device),
                          channels_last=device.type == "cuda" and cfg.channels_last, clip_grad_norm=cfg.clip_grad_norm,
                          scheduler=parts.scheduler, scaler=parts.scaler, checkpoint_every=cfg.checkpoint_every,
                          contrastive=plan, affinity_pieces=cfg.loss.affinity_targets == "pieces")
    tracker = _tracker(params, params_dict, ctx, run_id, resumed_from)
    if state is None:
        tracker.log_datasets({"training": train_files, "validation": val_files})
    sink = tracker.log_metrics
    if ctx.is_main:
        curves = CurveFiles(plots_folder(checkpoint), fresh=state is None)

        def sink(figures: dict, step: int) -> None:
            tracker.log_metrics(figures, step)
            curves(figures, step)

    metrics = MetricBuffer(sink, hold=cfg.checkpoint_every > 0)
    on_log = _with_validation_log(metrics, validation_log) if ctx.is_main else None
    picture, on_log = _with_pictures(tracker, on_log)

    def keep_best(step: int, scores: dict, evaluated: torch.nn.Module) -> None:
        best.update(step=step, metrics=dict(scores), state=copy.deepcopy(segmentation_network(evaluated).state_dict()))

    def save_periodic(step: int, result: TrainingResult) -> None:
        rngs = distributed.gather_objects(rng_state.capture(rng))
        if ctx.is_main:
            # Metrics first: a run killed after this checkpoint and resumed logs later steps once.
            metrics.flush()
            save_state(periodic_path(checkpoint, step), collect(parts, result, best, rngs, {
                "kind": "periodic", "params": params_dict, "fingerprint": current, "run_id": tracker.run_id,
                "model_name": params.model.name, "model_args": dict(model.constructor_args)}))
            prune_checkpoints(checkpoint, cfg.keep_last)
        distributed.barrier()

    bar = ProgressBar(cfg.steps, resumed_from, enabled=ctx.is_main)
    try:
        result = train_loop(network, loss_fn, batches, parts.optimizer, cfg.steps, cfg.batch_size, device,
                            cfg.log_every, cfg.val_every,
                            (lambda m: validation_scores(params, segmentation_network(m), validation, picture=picture))
                            if ctx.is_main else None,
                            on_log=on_log, on_best=keep_best, progress=bar,
                            ema=parts.ema, offsets=offsets, options=options, state=state,
                            on_checkpoint=save_periodic)
    except NonFiniteLoss as error:
        bar.close()
        # Every rank stops at the same step (the loop agrees on it), so all can report here.
        reports = distributed.gather_objects({"terms": error.terms, "raw": error.raw})
        if ctx.is_main:
            _diagnose(error, reports, parts, params_dict, checkpoint, params.model.name)
            tracker.finish("FAILED")
        raise
    except BaseException:
        bar.close()
        tracker.finish("FAILED")
        raise
    bar.close()
    if not ctx.is_main:
        return None
    return _finish(params, model, best, result, tracker, metrics, checkpoint, run_file, validation,
                   device, ctx, resumed_from)


def _with_pictures(tracker: Tracker, on_log: Callable[[dict, int], None] | None):
    """With tracking on: a ``picture`` callback for the validation and ``on_log`` that sends the
    picture of each validation to MLflow at that validation's step (key ``validation``)."""
    if on_log is None or not tracker.enabled:
        return None, on_log
    held: list[np.ndarray] = []

    def log(figures: dict, step: int) -> None:
        on_log(figures, step)
        if held and any(key.startswith("val_") for key in figures):
            tracker.log_image(held.pop(), "validation", step)

    return held.append, log


def _with_validation_log(sink: Callable[[dict, int], None],
                         path: str | Path | None) -> Callable[[dict, int], None]:
    """``sink``, plus one JSON line in ``path`` per validation (metrics named ``val_*``)."""
    if path is None:
        return sink

    def log(figures: dict, step: int) -> None:
        sink(figures, step)
        scores = {key[len("val_"):]: float(value) for key, value in figures.items() if key.startswith("val_")}
        if scores:
            with open(path, "a") as handle:
                handle.write(json.dumps({"step": step, **scores}) + "\n")

    return log


def _diagnose(error: NonFiniteLoss, reports: list[dict], parts: TrainingParts, params_dict: dict, checkpoint: Path,
              model_name: str) -> None:
    """Rank 0 saves what produced a non-finite loss beside the output and names the file in the error.

    ``reports`` holds every rank's loss terms and, on the ranks whose loss was not finite, their
    patches; the weights and optimiser state are those before the step.
    """
    path = nonfinite_path(checkpoint, error.step)
    save_state(path, {"kind": "nonfinite", "step": error.step, "ranks": reports,
                      "model": {k: v.detach().cpu() for k, v in parts.model.state_dict().items()},
                      "optimizer": parts.optimizer.state_dict(), "params": params_dict, "model_name": model_name,
                      "model_args": dict(segmentation_network(parts.model).constructor_args)})
    message = error.args[0]
    culprits = [rank for rank, report in enumerate(reports) if report["raw"] is not None]
    if not error.here and culprits:
        described = ", ".join(f"{k}={v:.4g}" for k, v in reports[culprits[0]]["terms"].items())
        message = f"non-finite loss at step {error.step} on rank {culprits[0]} ({described}); training stopped"
    error.args = (f"{message}; diagnostic checkpoint {path}",)


def _finish(params: Params, model: torch.nn.Module, best: dict, result: TrainingResult, tracker: Tracker,
            metrics: MetricBuffer, checkpoint: Path, run_file: str | Path | None,
            validation: list[tuple[np.ndarray, np.ndarray]], device: torch.device, ctx: DistContext,
            resumed_from: int) -> dict:
    """Rank 0 after the last step: calibrate on the best weights, write the output, close the run."""
    model.load_state_dict(best["state"])
    # The final score uses the predict stage's settings (test-time augmentation included), so the
    # thresholds and biases chosen here are the ones that fit what `segment` will see.
    calibration, final = final_calibration(params, model, validation)
    extra = {"best_step": best["step"], **checkpoint_facts(params.segment, calibration, final)}
    summary = {"best_step": best["step"], "val": final, "calibration": calibration, "seconds": result.seconds, "device": str(device),
               "processes": ctx.world_size, "resumed_from_step": resumed_from}
    save_checkpoint(checkpoint, model, params_as_dict(params), extra=extra)
    metrics.flush()
    tracker.log_metrics({"best_step": best["step"], "train_seconds": result.seconds,
                         **{f"final_val_{k}": v for k, v in final.items() if isinstance(v, (int, float))},
                         **{f"final_val_{name}_{k}": v for name, scores in calibration["variants"].items()
                            for k, v in scores.items() if isinstance(v, (int, float))}})
    tracker.set_tags({"segment_method": final["method"]})
    tracker.log_artifact(checkpoint, "checkpoint")
    tracker.log_model(model)
    if run_file is not None:
        with atomic_output(run_file) as tmp:
            tmp.write_text((tracker.run_id or "") + "\n")
    # The run is complete; its periodic checkpoints would only make a forced re-run skip training.
    remove_checkpoints(checkpoint)
    return summary
