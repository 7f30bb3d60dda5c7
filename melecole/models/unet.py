"""Anisotropy-aware residual 3D U-Net with an embedding head and a boundary head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from melecole.models.registry import register_model

NORMS = ("group", "batch", "instance", "none")
_MAX_GROUPS = 8


def _group_count(channels: int) -> int:
    """Largest number of groups <= min(8, channels) that divides ``channels``."""
    for groups in range(min(_MAX_GROUPS, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


class ResidualBlock(nn.Module):
    """Two 'same'-padded 3D convolutions with normalisation and ReLU, plus a skip path.

    The skip is the identity when the channel count is kept, else a 1x1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], norm: str) -> None:
        super().__init__()
        kernel = tuple(kernel)
        padding = tuple(k // 2 for k in kernel)
        # A bias right before a normalisation layer is cancelled by it: only keep it without norm.
        bias = norm == "none"
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, padding=padding, bias=bias)
        self.norm1 = _norm_layer(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel, padding=padding, bias=bias)
        self.norm2 = _norm_layer(norm, out_channels)
        self.act = nn.ReLU(inplace=True)
        if in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


def _as_triples(value: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    triples = []
    for entry in value:
        entry = [int(v) for v in entry]
        if len(entry) != 3:
            raise ValueError(f"{what} entries must be (z, y, x) triples, got {tuple(entry)}")
        triples.append(entry)
    return triples


def default_kernels(downsample: Sequence[Sequence[int]]) -> list[list[int]]:
    """(3, 3, 3) at every level, except (1, 3, 3) at level 0 when the first step keeps z.

    A first downsampling with z factor 1 signals anisotropic data (z voxels several times
    thicker than xy), where a 3-voxel z kernel at full resolution would mix distant sections.
    """
    kernels = [[3, 3, 3] for _ in range(len(downsample) + 1)]
    if downsample and int(downsample[0][0]) == 1:
        kernels[0] = [1, 3, 3]
    return kernels


@register_model("unet3d")
class UNet3D(nn.Module):
    """Residual 3D U-Net returning voxel embeddings and boundary logits.

    Level ``l`` has ``base_channels * channel_factor**l`` channels. The encoder max-pools by
    ``downsample[l]`` between levels ``l`` and ``l + 1``; the decoder undoes it with a
    transposed convolution of the same factors and concatenates the encoder's features.

    Args:
        in_channels: input channels (1 for grey-value EM).
        base_channels: channels at full resolution.
        channel_factor: channel multiplier per level.
        downsample: one (z, y, x) pooling factor per downsampling step; levels = len + 1.
        kernel: one odd (kz, ky, kx) convolution size per level; ``None`` uses
            :func:`default_kernels`.
        embedding_dim: channels of the embedding head.
        norm: ``"group"`` (min(8, C) groups, reduced until they divide C), ``"batch"``,
            ``"instance"`` or ``"none"``.
        affinity_channels: channels of an optional direct affinity head (0 = none).
        learnable_scale: multiply the embedding by ``exp(s)`` with a learned scalar ``s`` (from 0).

    Attributes:
        constructor_args: plain-Python keyword arguments (lists, ints, strs) that rebuild this
            model with ``build_model("unet3d", **constructor_args)``; ``kernel`` holds the
            resolved kernels so a later change of the defaults cannot alter a checkpoint.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 16,
        channel_factor: int = 2,
        downsample: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2)),
        kernel: Sequence[Sequence[int]] | None = None,
        embedding_dim: int = 16,
        norm: str = "group",
        affinity_channels: int = 0,
        learnable_scale: bool = False,
    ) -> None:
        super().__init__()
        downsample = _as_triples(downsample, "downsample")
        kernels = default_kernels(downsample) if kernel is None else _as_triples(kernel, "kernel")
        levels = len(downsample) + 1
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got '{norm}'")
        for name, value in (("in_channels", in_channels), ("base_channels", base_channels),
                            ("channel_factor", channel_factor), ("embedding_dim", embedding_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if any(f < 1 for step in downsample for f in step):
            raise ValueError(f"downsample factors must be >= 1, got {downsample}")
        if len(kernels) != levels:
            raise ValueError(f"kernel has {len(kernels)} entries; {levels} levels need one each")
        if any(k < 1 or k % 2 == 0 for triple in kernels for k in triple):
            raise ValueError(f"kernel sizes must be odd and positive for 'same' padding, got {kernels}")

        self.constructor_args = {
            "in_channels": int(in_channels),
            "base_channels": int(base_channels),
            "channel_factor": int(channel_factor),
            "downsample": downsample,
            "kernel": kernels,
            "embedding_dim": int(embedding_dim),
            "norm": str(norm),
            "affinity_channels": int(affinity_channels),
            "learnable_scale": bool(learnable_scale),
        }
        self._divisor = tuple(math.prod(step[axis] for step in downsample) for axis in range(3))
        self.in_channels = int(in_channels)
        channels = [int(base_channels) * int(channel_factor) ** level for level in range(levels)]

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        previous = self.in_channels
        for level in range(levels):
            self.encoders.append(ResidualBlock(previous, channels[level], kernels[level], norm))
            previous = channels[level]
            if level < levels - 1:
                factor = tuple(downsample[level])
                self.pools.append(nn.MaxPool3d(factor, stride=factor))

        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(levels - 1)):
            factor = tuple(downsample[level])
            self.upsamplers.append(nn.ConvTranspose3d(channels[level + 1], channels[level], factor, stride=factor))
            # Input is the upsampled features concatenated with the encoder's skip features.
            self.decoders.append(ResidualBlock(2 * channels[level], channels[level], kernels[level], norm))

        self.embedding_head = nn.Conv3d(channels[0], int(embedding_dim), 1)
        self.boundary_head = nn.Conv3d(channels[0], 1, 1)
        # Optional direct affinity prediction (logits), one channel per segmentation offset.
        self.affinity_head = nn.Conv3d(channels[0], int(affinity_channels), 1) if affinity_channels > 0 else None
        # The loss has fixed margins (delta_v, delta_d); a learned overall scale lets the network
        # match them without distorting every weight of the embedding head.
        self.log_scale = nn.Parameter(torch.zeros(())) if learnable_scale else None

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Per-axis (z, y, x) number the input's spatial shape must be a multiple of."""
        return self._divisor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the network.

        Args:
            x: input volume batch, (B, C, Z, Y, X) with Z, Y, X multiples of :attr:`divisor`.

        Returns:
            ``{"embedding": (B, E, Z, Y, X), "boundary": (B, 1, Z, Y, X) logits}``, plus
            ``"affinities"`` (B, affinity_channels, Z, Y, X) logits when that head exists.

        Raises:
            ValueError: if the input is not 5-D, has the wrong channel count, or its spatial
                shape is not divisible by :attr:`divisor`.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input {tuple(x.shape)} must be (B, {self.in_channels}, Z, Y, X)"
            )
        spatial = tuple(x.shape[2:])
        if any(size % div for size, div in zip(spatial, self._divisor)):
            raise ValueError(
                f"input {tuple(x.shape)}: spatial shape {spatial} must be divisible by {self._divisor} "
                "(the product of the downsampling factors per axis)"
            )
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)  # (B, C_level, Z_level, Y_level, X_level)
            if level < len(self.pools):
                skips.append(x)
                x = self.pools[level](x)
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        embedding = self.embedding_head(x)
        if self.log_scale is not None:
            embedding = embedding * self.log_scale.exp()
        outputs = {"embedding": embedding, "boundary": self.boundary_head(x)}
        if self.affinity_head is not None:
            outputs["affinities"] = self.affinity_head(x)
        return outputs
