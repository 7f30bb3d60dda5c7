"""Typed, validated configuration: one model per stage, unknown keys are errors.

``params.yaml`` is parsed once into :class:`Params`; each stage unpacks its own section at its
entry point and passes plain arguments to library functions (DESIGN.md, style rule 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from melecole.data.augment.params import AugmentConfig
from melecole.errors import MelecoleError

Triple = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Strict):
    """Size and character of the synthetic SNEMI3D-like volumes."""

    shape: Triple = (24, 96, 96)
    anisotropy: float = Field(5.0, gt=0, description="z voxel size / xy voxel size")
    neurites: int = Field(40, ge=1)
    noise: float = Field(0.08, ge=0)
    blur: float = Field(0.8, ge=0)
    defects: bool = True


class Snemi3dConfig(_Strict):
    """Where the SNEMI3D archive lives (``dvc import-url`` or ``melecole fetch-snemi3d``) and its checksum."""

    archive: str = "downloads/snemi3d.zip"
    sha256: str | None = None


class DataConfig(_Strict):
    """Which volumes the pipeline prepares and how the training block is split."""

    dataset: Literal["flyem-fib-small", "flyem-fib-medulla", "synthetic", "snemi3d"] = "flyem-fib-small"
    extra_train: list[Literal["flyem-fib-small", "flyem-fib-medulla"]] = []
    validate_extra: bool = Field(
        True, description="also cut the validation slab off every extra training volume and validate on all "
                          "the slabs pooled (threshold and checkpoint chosen on more than one acquisition)")
    val_axis: int = Field(2, ge=0, le=2)
    val_fraction: float = Field(0.25, gt=0, lt=1)
    test_extra: list[Literal["flyem-fib-small", "flyem-fib-medulla"]] = Field(
        [], description="more test volumes, scored in every run beside the main test block (data/test-<name>.h5): "
                        "a dataset's own test block, or a slab held out of its training block (never trained or "
                        "validated on)")
    test_axis: int = Field(0, ge=0, le=2, description="axis of the slab held out for test_extra")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of the training block held out for test_extra")
    bundled_root: str = "datasets"
    synthetic: SyntheticConfig = SyntheticConfig()
    snemi3d: Snemi3dConfig = Snemi3dConfig()


class ModelConfig(_Strict):
    """Constructor arguments of the residual 3D U-Net."""

    name: Literal["unet3d"] = "unet3d"
    in_channels: int = Field(1, ge=1)
    base_channels: int = Field(16, ge=1)
    channel_factor: int = Field(2, ge=1)
    downsample: list[Triple] = [(2, 2, 2), (2, 2, 2)]
    kernel: list[Triple] | None = None
    embedding_dim: int = Field(16, ge=1)
    norm: Literal["group", "batch", "instance", "none"] = "group"
    affinity_head: bool = Field(False, description="also predict affinities at segment.offsets directly (BCE)")
    learnable_scale: bool = Field(False, description="multiply the embedding by a learned scalar exp(s), s from 0")

    @model_validator(mode="after")
    def _kernel_per_level(self) -> ModelConfig:
        if self.kernel is not None and len(self.kernel) != len(self.downsample) + 1:
            raise ValueError(
                f"model.kernel has {len(self.kernel)} entries; it needs one per level "
                f"({len(self.downsample) + 1} for {len(self.downsample)} downsampling steps)"
            )
        return self


class LossConfig(_Strict):
    """Discriminative embedding loss (Lee et al. 2019) plus boundary BCE."""

    delta_v: float = Field(0.5, ge=0, description="pull margin: voxels within delta_v of their piece's mean cost "
                                                   "nothing (0: every voxel pulled onto the mean, as Lee et al.)")
    delta_d: float = Field(1.5, gt=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(0.001, ge=0)
    norm: Literal["l1", "l2"] = "l2"
    boundary_weight: float = Field(1.0, ge=0)
    affinity_weight: float = Field(1.0, ge=0, description="weight of the affinity BCE when model.affinity_head is on")
    embedding_affinity_weight: float = Field(
        0.0, ge=0, description="weight of a class-balanced BCE on the embedding's own distance affinities at "
                               "segment.offsets (the graph the Mutex Watershed reads); 0 = off")
    affinity_targets: Literal["labels", "pieces"] = Field(
        "pieces", description="affinity head targets from the patch's labels, or from its connected pieces as the "
                              "embedding's instances (pieces of one neuron meeting outside the patch differ)")
    inter_pairs: Literal["all", "other_labels"] = Field(
        "all", description="pairs of the patch's connected pieces the embedding loss pushes apart: all, or only "
                           "pieces of different labels (pieces of one neuron meeting outside the patch are then "
                           "neither pulled nor pushed)")

    @model_validator(mode="after")
    def _margins(self) -> LossConfig:
        if self.delta_d <= self.delta_v:
            raise ValueError(f"loss.delta_d ({self.delta_d}) must exceed loss.delta_v ({self.delta_v})")
        return self


class ContrastiveConfig(_Strict):
    """Momentum-contrastive (MoCo) branch: two views per sample, voxel-level InfoNCE."""

    mode: Literal["supervised", "pretrain", "joint"] = Field(
        "supervised", description="supervised only | contrastive pre-training for pretrain_steps, then "
                                  "supervised fine-tuning | joint (supervised + weight * contrastive)")
    weight: float = Field(0.1, ge=0, description="weight of the contrastive term in joint mode")
    pretrain_steps: int = Field(0, ge=0, description="contrastive-only steps before fine-tuning (pretrain mode)")
    temperature: float = Field(0.1, gt=0)
    queue_size: int = Field(4096, ge=1, description="negative keys kept from earlier batches")
    momentum: float = Field(0.99, ge=0, lt=1, description="key network = momentum * key + (1 - momentum) * online")
    projection_dim: int = Field(32, ge=1)
    pairs: int = Field(256, ge=2, description="voxel pairs drawn per sample from the views' overlap")
    max_offset: Triple = Field((8, 8, 8), description="largest shift between the two views, per axis")


class TrainConfig(_Strict):
    """Optimisation, sampling and validation during training."""

    steps: int = Field(600, ge=1)
    init_from: str | None = Field(
        None, description="start from the weights of this checkpoint (a path or zoo:NAME) instead of random ones, "
                          "to fine-tune it; the model settings must be the checkpoint's")
    batch_size: int = Field(1, ge=1)
    patch: Triple = (48, 48, 48)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.0, ge=0, lt=1, description="validate and keep an exponential moving average of the weights; 0 = off")
    augment: AugmentConfig = AugmentConfig()
    min_labelled: float = Field(0.5, ge=0, le=1)
    val_every: int = Field(200, ge=1)
    log_every: int = Field(20, ge=1)
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    device: str = Field("auto", description="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    loss: LossConfig = LossConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    processes: int = Field(1, ge=1, description="DDP processes on this machine; > 1 re-launches under torchrun")
    workers: int = Field(0, ge=0, description="DataLoader worker processes preparing patches; 0 = in the training process")
    accumulate: int = Field(1, ge=1, description="micro-batches per optimiser step (gradient accumulation)")
    schedule: Literal["constant", "cosine", "cosine_restarts"] = Field(
        "constant", description="learning-rate schedule after the warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from lr / warmup_steps to lr")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine schedules end each cycle at lr * min_lr_factor")
    restart_steps: int = Field(0, ge=0, description="first cosine cycle in steps; 0 = all steps after the warm-up")
    restart_mult: int = Field(1, ge=1, description="each cosine cycle is this many times longer than the previous")
    clip_grad_norm: float = Field(0.0, ge=0, description="clip the gradient norm to this; 0 = off")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision on CUDA (auto = bf16 where supported, else fp16); always off on CPU")
    channels_last: bool = Field(True, description="channels_last_3d memory format on CUDA (ignored on CPU)")
    checkpoint_every: int = Field(100, ge=0, description="resumable checkpoint every N steps; 0 = off")
    keep_last: int = Field(2, ge=1, description="periodic checkpoints kept")
    dist_timeout: int = Field(1800, ge=10, description="seconds a process waits for the others before failing")

    @model_validator(mode="after")
    def _contrastive_fits(self) -> TrainConfig:
        c = self.contrastive
        if c.mode == "supervised":
            return self
        if c.mode == "pretrain" and not 0 < c.pretrain_steps < self.steps:
            raise ValueError(f"contrastive.pretrain_steps ({c.pretrain_steps}) must be above 0 and below "
                             f"train.steps ({self.steps}) in pretrain mode")
        if any(not 0 <= m < p for m, p in zip(c.max_offset, self.patch)):
            raise ValueError(f"contrastive.max_offset {c.max_offset} must be at least 0 and below train.patch {self.patch}")
        if self.workers > 0:
            raise ValueError("contrastive training draws its views in the training process: set train.workers to 0")
        return self


class PredictConfig(_Strict):
    """Sliding-window inference."""

    patch: Triple = (48, 48, 48)
    overlap: Triple = (12, 12, 12)
    batch_size: int = Field(1, ge=1)
    augment: Literal["none", "flips", "permutations"] = Field(
        "none", description="test-time augmentation: average over 8 flips or 6 axis orders")
    affinity: Literal["distance", "cosine"] = Field(
        "distance", description="embedding affinities from the loss's distance and margin, or max(0, cosine)")
    chunks: Triple = Field((64, 64, 64), description="storage chunks (z, y, x) of every output")
    block: Triple | None = Field(
        None, description="voxels (z, y, x) predicted at once, a multiple of chunks; null = the largest that fits "
                          "memory_gb (the result does not depend on it)")
    memory_gb: float = Field(2.0, gt=0, description="working memory of one block's accumulators, per worker")
    embedding: bool = Field(False, description="also store the embedding (float16, E times the bytes of a boundary)")

    @model_validator(mode="after")
    def _overlap_fits(self) -> PredictConfig:
        if any(o * 2 >= p for o, p in zip(self.overlap, self.patch)):
            raise ValueError(f"predict.overlap {self.overlap} must be below half of predict.patch {self.patch}")
        return self


class AgglomerationConfig(_Strict):
    """Fragments + hierarchical agglomeration of nearest-neighbour affinities (waterz)."""

    source: Literal["boundary", "embedding", "affinities"] = Field(
        "boundary", description="nearest-neighbour affinities from the boundary head, the embedding, "
                                "or the affinity head (needs model.affinity_head)")
    scoring: Literal["mean", "median", "q75"] = "mean"
    threshold: float | None = Field(
        None, gt=0, lt=1, description="merge threshold; null = the one chosen on the validation volume in training")
    candidates: list[float] = Field(
        [0.2, 0.25, 0.3, 0.35, 0.4, 0.425, 0.45, 0.475, 0.5, 0.525, 0.55, 0.575, 0.6, 0.65, 0.7, 0.8, 0.9],
        min_length=1, description="thresholds tried on the validation volume")
    margin: float = Field(
        0.05, ge=0, lt=1, description="robust choice: the candidate whose worst VI sum over the candidates within "
                                      "+-margin is lowest (the best threshold moves between volumes); 0 = plain minimum")

    @field_validator("candidates")
    @classmethod
    def _increasing(cls, candidates: list[float]) -> list[float]:
        if sorted(candidates) != candidates or not all(0 < c < 1 for c in candidates):
            raise ValueError(f"thresholds must be increasing and inside (0, 1), got {candidates}")
        return candidates


class WatershedConfig(_Strict):
    """Seeded watershed on the boundary map (distance-transform seeds): the classical baseline."""

    threshold: float = Field(0.5, gt=0, lt=1)
    sigma_seeds: float = Field(2.0, ge=0)
    min_size: int = Field(50, ge=0)


class StrideChoice(_Strict):
    """Which repulsive edges the Mutex Watershed keeps: those on a ``strides`` grid, or (``randomize``)
    each with probability ``1 / prod(strides)``."""

    strides: Triple = (1, 1, 1)
    randomize: bool = False

    @field_validator("strides")
    @classmethod
    def _positive(cls, strides: Triple) -> Triple:
        if min(strides) < 1:
            raise ValueError(f"strides must be positive, got {list(strides)}")
        return strides


SegmentMethod = Literal["agglomeration", "mws", "watershed"]
# A method with its input: agglomeration / mws on the affinity head ("-affinities") or on the
# embedding's affinities ("-embedding"); the plain method names take their source from
# agglomeration.source and mws_source.
SegmentVariant = Literal["agglomeration", "mws", "watershed", "agglomeration-affinities", "agglomeration-embedding",
                         "agglomeration-boundary", "mws-embedding", "mws-affinities"]
CalibratedVariant = Literal["agglomeration-affinities", "agglomeration-embedding", "agglomeration-boundary",
                            "mws-embedding", "mws-affinities"]


class SegmentConfig(_Strict):
    """Predictions -> segmentation: the main method plus baselines written beside it."""

    method: Literal["auto", "agglomeration", "mws", "watershed"] = Field(
        "auto", description="auto = whichever of segment.choices scored best on pooled validation at the end of "
                            "training (stored in the checkpoint; agglomeration for checkpoints without that choice)")
    choices: list[CalibratedVariant] = Field(
        ["agglomeration-affinities", "agglomeration-embedding", "mws-embedding", "mws-affinities"], min_length=1,
        description="variants calibrated on validation at the end of training, each with its own knob "
                    "(agglomeration threshold, Mutex Watershed bias); -affinities ones need model.affinity_head")
    baselines: list[SegmentVariant] = Field(
        ["agglomeration-affinities", "agglomeration-embedding", "mws-embedding", "mws-affinities", "watershed"],
        description="also written and scored beside the main result (the main one itself is left out)")
    # Mutex Watershed on embedding affinities. Isotropic FIB-SEM default: 3 nearest neighbours
    # (attractive), then long-range offsets (repulsive).
    offsets: list[Triple] = [
        (-1, 0, 0), (0, -1, 0), (0, 0, -1),
        (-3, 0, 0), (0, -3, 0), (0, 0, -3),
        (-9, 0, 0), (0, -9, 0), (0, 0, -9),
        (-6, -6, 0), (0, -6, -6), (-6, 0, -6),
    ]
    attractive: int = Field(3, ge=3, le=3, description="the first 3 offsets (nearest neighbours) are attractive, the rest repulsive")
    mws_source: Literal["embedding", "affinities"] = Field(
        "embedding", description="Mutex Watershed on embedding affinities or on the affinity head's")
    mws_seeds: Literal["none", "boundary"] = Field(
        "none", description="seed the Mutex Watershed with the connected cores of the boundary map's interior")
    seed_distance: float = Field(3.0, ge=0, description="cores: voxels at least this far from boundary "
                                                        "(prob >= watershed.threshold)")
    mws_bias: float | None = Field(
        None, ge=-1, le=1, description="added to the repulsive affinities before the Mutex Watershed (> 0: weaker "
                                       "repulsion, fewer splits); null = the one chosen on validation in training, else 0")
    mws_map: Literal["auto", "none", "fitted"] = Field(
        "auto", description="affinities into the Mutex Watershed: as predicted (none), through the per-offset "
                            "P(one object | affinity) fitted on validation (fitted), or whichever scored better there (auto)")
    mws_bias_candidates: list[float] = Field(
        [-0.5, -0.4, -0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3], min_length=1,
        description="biases tried on the validation volumes for each mws variant")
    mws_bias_margin: float = Field(
        0.05, ge=0, lt=1, description="robust choice of the bias: the candidate whose worst VI sum within +-margin is "
                                     "lowest; 0 = plain minimum")
    strides: Triple = Field((1, 1, 1), description="Mutex Watershed: repulsive edges kept on this (z, y, x) grid "
                                                   "when mws_stride_candidates is empty")
    randomize_strides: bool = Field(False, description="keep each repulsive edge with probability 1 / prod(strides) "
                                                      "instead of on a grid")
    mws_stride_candidates: list[StrideChoice] = Field(
        [StrideChoice(strides=(1, 1, 1)), StrideChoice(strides=(2, 2, 2)),
         StrideChoice(strides=(2, 2, 2), randomize=True)],
        description="repulsive-edge strides tried on validation for each mws variant after its bias (stored in the "
                    "checkpoint, used by segment); [] = strides and randomize_strides as set")
    foreground_threshold: float = Field(1.0, gt=0, le=1, description="voxels with boundary prob >= this are background; 1 disables")
    min_size: int = Field(50, ge=0, description="segments smaller than this merge into their largest-contact "
                                                "neighbour (when min_size_candidates is empty or nothing was calibrated)")
    min_size_candidates: list[int] = Field(
        [25, 50, 100, 200, 400, 800],
        description="size filters tried on validation, with min_size, for each calibrated variant after its "
                    "threshold or bias (stored in the checkpoint, used by segment); [] = min_size as set")
    agglomeration: AgglomerationConfig = AgglomerationConfig()
    watershed: WatershedConfig = WatershedConfig()

    @field_validator("mws_bias_candidates")
    @classmethod
    def _increasing_biases(cls, candidates: list[float]) -> list[float]:
        if sorted(candidates) != candidates or not all(-1 <= c <= 1 for c in candidates):
            raise ValueError(f"biases must be increasing and inside [-1, 1], got {candidates}")
        return candidates

    @field_validator("min_size_candidates")
    @classmethod
    def _sizes(cls, candidates: list[int]) -> list[int]:
        if any(c < 0 for c in candidates) or len(set(candidates)) != len(candidates):
            raise ValueError(f"size filters must be distinct and >= 0, got {candidates}")
        return candidates

    @field_validator("offsets")
    @classmethod
    def _no_zero_offset(cls, offsets: list[Triple]) -> list[Triple]:
        if any(o == (0, 0, 0) for o in offsets):
            raise ValueError("segment.offsets must not contain (0, 0, 0)")
        return offsets

    @model_validator(mode="after")
    def _offsets_fit(self) -> SegmentConfig:
        if self.attractive >= len(self.offsets):
            raise ValueError(
                f"segment.attractive ({self.attractive}) must leave at least one repulsive offset "
                f"among {len(self.offsets)}"
            )
        nearest = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
        if [tuple(o) for o in self.offsets[:3]] != nearest:
            raise ValueError(f"segment.offsets must start with the nearest neighbours {nearest}")
        return self


class TrackingConfig(_Strict):
    """MLflow experiment name; the tracking URI comes from MLFLOW_TRACKING_URI or a local store."""

    experiment: str = "melecole"
    enabled: bool = True


class Params(_Strict):
    """The whole of params.yaml."""

    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    segment: SegmentConfig = SegmentConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _tiles_hold_every_pair(self) -> Params:
        # Affinities are computed inside each tile: a pair longer than the tiles' overlap along an
        # axis is held by no tile at the seams and would read 0 there.
        reach = tuple(max(abs(o[axis]) for o in self.segment.offsets) for axis in range(3))
        if any(o < r for o, r in zip(self.predict.overlap, reach)):
            raise ValueError(f"predict.overlap {tuple(self.predict.overlap)} must be at least the longest "
                             f"segment.offsets step per axis {reach}: affinities are computed inside each tile")
        return self

    @model_validator(mode="after")
    def _affinity_source_needs_head(self) -> Params:
        if self.segment.agglomeration.source == "affinities" and not self.model.affinity_head:
            raise ValueError("segment.agglomeration.source 'affinities' needs model.affinity_head: true")
        if self.segment.mws_source == "affinities" and not self.model.affinity_head:
            raise ValueError("segment.mws_source 'affinities' needs model.affinity_head: true")
        return self


def _describe(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"'{where}': {item['msg']}")
    return f"{source}: " + "; ".join(parts)


def params_from_dict(raw: dict, source: str = "params") -> Params:
    """Validates a nested dictionary into :class:`Params`.

    Raises:
        MelecoleError: naming the source and every unknown or invalid key.
    """
    if not isinstance(raw, dict):
        raise MelecoleError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise MelecoleError(_describe(error, source)) from None


def read_yaml(path: str | Path, what: str = "parameter file") -> object:
    """Parses a YAML file (empty -> {}), with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MelecoleError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MelecoleError(f"{path}: not valid YAML ({error})") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Reads and validates a params.yaml file (a missing file is an error, not all defaults)."""
    return params_from_dict(read_yaml(path), str(path))


def with_train(params: Params, **changes) -> Params:
    """``params`` with these ``train`` settings changed (e.g. ``init_from``, ``threads``)."""
    return params.model_copy(update={"train": params.train.model_copy(update=changes)})


def params_as_dict(params: Params) -> dict:
    """Plain nested dict (lists instead of tuples), for checkpoints, YAML and MLflow."""
    return params.model_dump(mode="json")
