"""Sliding-window inference: exact reconstruction, coverage, batching, argument checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from melecole.inference.sliding_window import blend_window, sliding_window_predict, tile_starts

PATCH = (4, 8, 8)
OVERLAP = (1, 2, 3)


def _identity(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"raw": x, "double": torch.cat([x, 2 * x], dim=1)}


def _volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "shape",
    [
        (8, 16, 16),  # multiple of the patch
        (9, 13, 11),  # not a multiple
        (3, 5, 20),  # smaller than the patch along z and y
        (1, 1, 1),  # one voxel
    ],
)
def test_identity_predictor_reconstructs_the_input(shape: tuple[int, int, int]) -> None:
    raw = _volume(shape)
    before = raw.copy()
    out = sliding_window_predict(_identity, raw, PATCH, OVERLAP)
    assert set(out) == {"raw", "double"}
    assert out["raw"].shape == (1,) + shape and out["double"].shape == (2,) + shape
    assert out["raw"].dtype == np.float32
    np.testing.assert_allclose(out["raw"][0], raw, atol=1e-5)
    np.testing.assert_allclose(out["double"][0], raw, atol=1e-5)
    np.testing.assert_allclose(out["double"][1], 2 * raw, atol=1e-5)
    np.testing.assert_array_equal(raw, before)


def test_constant_predictor_gives_the_constant_everywhere() -> None:
    def constant(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"c": torch.full((x.shape[0], 3) + tuple(x.shape[2:]), 3.5)}

    out = sliding_window_predict(constant, _volume((7, 19, 10)), PATCH, OVERLAP, batch_size=2)
    np.testing.assert_allclose(out["c"], 3.5, rtol=1e-6)


@pytest.mark.parametrize(("size", "patch", "overlap"), [(16, 8, 2), (13, 8, 2), (8, 8, 3), (20, 5, 0), (9, 4, 3)])
def test_tiles_cover_every_voxel_and_end_at_the_volume_end(size: int, patch: int, overlap: int) -> None:
    starts = tile_starts(size, patch, overlap)
    covered = np.zeros(size, dtype=int)
    for start in starts:
        covered[start:start + patch] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(b - a <= patch - overlap for a, b in zip(starts, starts[1:]))


def test_tiles_are_blended_and_batching_does_not_change_the_result() -> None:
    # The output depends on the whole tile, so overlapping tiles disagree and blending shows.
    def tile_mean(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"m": x + x.mean(dim=(2, 3, 4), keepdim=True)}

    calls: list[int] = []

    def counting(x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert x.shape[1:] == (1,) + PATCH and x.dtype == torch.float32
        calls.append(x.shape[0])
        return tile_mean(x)

    raw = _volume((9, 13, 11), seed=1)
    one = sliding_window_predict(counting, raw, PATCH, OVERLAP, batch_size=1)
    n_tiles = len(calls)
    calls.clear()
    three = sliding_window_predict(counting, raw, PATCH, OVERLAP, batch_size=3)
    np.testing.assert_allclose(one["m"], three["m"], atol=1e-6)
    assert sum(calls) == n_tiles and max(calls) == 3 and len(calls) == -(-n_tiles // 3)
    assert n_tiles == 3 * 2 * 2

    # Away from the borders the result is a true mixture of tiles, not one tile's output.
    residual = one["m"][0] - raw
    assert np.ptp(residual) > 1e-3
    # Voxel (0, 0, 0) is covered by the first tile only, so it keeps that tile's value exactly.
    first = raw[:4, :8, :8]
    np.testing.assert_allclose(residual[0, 0, 0], first.mean(), atol=1e-5)


def test_window_is_positive_and_peaks_in_the_middle() -> None:
    window = blend_window((4, 8, 8))
    assert window.shape == (4, 8, 8) and window.dtype == np.float32
    assert window.min() > 0
    assert window[0, 0, 0] < window[2, 4, 4] and window.max() == window[1:3, 3:5, 3:5].max()
    np.testing.assert_array_equal(blend_window((1, 1, 1)), [[[1.0]]])


def test_device_is_used_for_the_tiles() -> None:
    seen = set()

    def recording(x: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.add(x.device)
        return {"raw": x}

    sliding_window_predict(recording, _volume((4, 8, 8)), PATCH, OVERLAP, device=torch.device("cpu"))
    sliding_window_predict(recording, _volume((4, 8, 8)), PATCH, OVERLAP)
    assert seen == {torch.device("cpu")}


def test_runs_without_autograd() -> None:
    layer = torch.nn.Conv3d(1, 2, 3, padding=1)

    def model(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = layer(x)
        assert not out.requires_grad
        return {"y": out}

    out = sliding_window_predict(model, _volume((5, 9, 9)), PATCH, OVERLAP)
    assert out["y"].shape == (2, 5, 9, 9) and np.isfinite(out["y"]).all()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"divisor": (1, 3, 3)}, r"\(4, 8, 8\).*\(1, 3, 3\)"),
        ({"overlap": (4, 2, 2)}, r"overlap \(4, 2, 2\).*\(4, 8, 8\)"),
        ({"raw": np.zeros((4, 4), np.float32)}, r"\(4, 4\)"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, pattern: str) -> None:
    arguments = {"predictor": _identity, "raw": _volume((4, 8, 8)), "patch": PATCH, "overlap": OVERLAP, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        sliding_window_predict(**arguments)


def test_predictor_output_of_the_wrong_shape_is_rejected() -> None:
    def cropping(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"bad": x[:, :, 1:]}

    with pytest.raises(ValueError, match=r"'bad'.*\(1, 1, 3, 8, 8\)"):
        sliding_window_predict(cropping, _volume((4, 8, 8)), PATCH, OVERLAP)


def test_scalar_overlap_and_every_tile_position_visited() -> None:
    visited = set()
    raw = np.arange(np.prod((6, 10, 9)), dtype=np.float32).reshape(6, 10, 9)

    def locating(x: torch.Tensor) -> dict[str, torch.Tensor]:
        for tile in x[:, 0]:
            visited.add(tuple(int(i) for i in np.argwhere(raw == float(tile[0, 0, 0]))[0]))
        return {"raw": x}

    out = sliding_window_predict(locating, raw, PATCH, 2, batch_size=4)
    expected = set(itertools.product(tile_starts(6, 4, 2), tile_starts(10, 8, 2), tile_starts(9, 8, 2)))
    assert visited == expected
    np.testing.assert_allclose(out["raw"][0], raw, atol=1e-3)
