"""Whole-volume prediction with test-time augmentation: transforms invert exactly, averages are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melecole.inference.transforms import backward as _backward, forward as _forward
from melecole.inference.volume import augmentations, predict_volume


@pytest.mark.parametrize("kind", ["none", "flips", "permutations"])
def test_transforms_invert_exactly(kind):
    volume = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    transforms = augmentations(kind)
    assert transforms[0] == ((0, 1, 2), ())
    assert len(transforms) == {"none": 1, "flips": 8, "permutations": 6}[kind]
    for transform in transforms:
        np.testing.assert_array_equal(_backward(_forward(volume, transform)[None], transform)[0], volume)


class _PointwiseModel(torch.nn.Module):
    """Embedding and boundary are functions of each voxel's own intensity: equivariant to any transform."""

    divisor = (1, 1, 1)

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return {"embedding": torch.cat([x * self.scale, -x], 1), "boundary": x * 2}


class _ZGradientModel(_PointwiseModel):
    """Boundary = intensity change along the first axis: not equivariant to axis permutations."""

    def forward(self, x):
        out = super().forward(x)
        grad = torch.zeros_like(x)
        grad[:, :, 1:] = x[:, :, 1:] - x[:, :, :-1]
        out["boundary"] = grad * 4
        return out


def _predict(model, raw, augment, patch=(4, 4, 4)):
    return predict_volume(model, raw, patch, (1, 1, 1), 2, [(-1, 0, 0), (0, -1, 0), (0, 0, -1)],
                          1.5, "l2", augment)


def test_equivariant_model_gives_the_same_result_with_any_augmentation():
    raw = np.random.default_rng(1).normal(size=(6, 7, 9)).astype(np.float32)
    plain = _predict(_PointwiseModel(), raw, "none")
    for augment in ("flips", "permutations"):
        augmented = _predict(_PointwiseModel(), raw, augment)
        for key in ("embedding", "boundary", "affinities"):
            np.testing.assert_allclose(augmented[key], plain[key], atol=1e-5)


def test_augmentation_averages_the_boundary_over_axis_orders():
    raw = np.random.default_rng(2).normal(size=(6, 6, 6)).astype(np.float32)
    # One tile covers the volume, so tile edges do not change the gradient.
    plain = _predict(_ZGradientModel(), raw, "none", patch=(6, 6, 6))["boundary"]
    averaged = _predict(_ZGradientModel(), raw, "permutations", patch=(6, 6, 6))["boundary"]
    expected = 0.0
    for axis in range(3):
        grad = np.zeros_like(raw)
        index = [slice(None)] * 3
        before = [slice(None)] * 3
        index[axis], before[axis] = slice(1, None), slice(None, -1)
        grad[tuple(index)] = raw[tuple(index)] - raw[tuple(before)]
        expected = expected + 2 * (1 / (1 + np.exp(-grad * 4)))  # each axis first in 2 of the 6 orders
    np.testing.assert_allclose(averaged, expected / 6, atol=1e-5)
    assert not np.allclose(averaged, plain, atol=1e-3)


def test_cosine_metric_gives_cosine_affinities():
    raw = np.random.default_rng(3).normal(size=(5, 6, 7)).astype(np.float32)
    out = predict_volume(_PointwiseModel(), raw, (4, 4, 4), (1, 1, 1), 2, [(0, 0, -1)], 1.5, "l2", "none", "cosine")
    # Embedding (x, -x): every vector points along (1, -1) or (-1, 1), so cos is +1 or -1.
    same_sign = np.sign(raw[:, :, 1:]) == np.sign(raw[:, :, :-1])
    np.testing.assert_allclose(out["affinities"][0][:, :, 1:], same_sign.astype(np.float32), atol=1e-5)
    with pytest.raises(ValueError, match="unknown affinity metric"):
        predict_volume(_PointwiseModel(), raw, (4, 4, 4), (1, 1, 1), 2, [(0, 0, -1)], 1.5, "l2", "none", "angle")


OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -2, 0), (0, 0, -2), (-2, -2, 0), (0, -2, -2),
           (-2, 0, -2)]


class _PairModel(_PointwiseModel):
    """Affinity logits from the intensities of each voxel pair: exact affinities in any frame."""

    def forward(self, x):
        out = super().forward(x)
        channels = []
        for offset in OFFSETS:
            partner = torch.zeros_like(x)
            src = tuple(slice(max(0, -d), n - max(0, d)) for n, d in zip(x.shape[2:], offset))
            dst = tuple(slice(max(0, d), n - max(0, -d)) for n, d in zip(x.shape[2:], offset))
            partner[(..., *src)] = x[(..., *dst)]
            channels.append(-(x - partner).abs() * 3)
        out["affinities"] = torch.cat(channels, 1)
        return out


@pytest.mark.parametrize("augment", ["flips", "permutations"])
def test_predicted_affinities_are_remapped_to_their_channels_under_every_transform(augment):
    raw = np.random.default_rng(4).normal(size=(6, 6, 6)).astype(np.float32)
    plain = predict_volume(_PairModel(), raw, (6, 6, 6), (1, 1, 1), 1, OFFSETS, 1.5, "l2", "none")
    augmented = predict_volume(_PairModel(), raw, (6, 6, 6), (1, 1, 1), 1, OFFSETS, 1.5, "l2", augment)
    # Wherever the partner voxel is inside the volume every vote is the same exact affinity.
    for channel, offset in enumerate(OFFSETS):
        inside = tuple(slice(max(0, -d), n - max(0, d)) for n, d in zip(raw.shape, offset))
        np.testing.assert_allclose(augmented["predicted_affinities"][(channel, *inside)],
                                   plain["predicted_affinities"][(channel, *inside)], atol=1e-6)


def test_a_biased_affinity_head_is_averaged_over_the_axis_orders():
    class _ZBiased(_PairModel):
        def forward(self, x):
            out = super().forward(x)
            out["affinities"][:, 0] += 2.0  # a head that over-trusts the first axis of its input
            return out

    raw = np.random.default_rng(5).normal(size=(6, 6, 6)).astype(np.float32)
    exact = predict_volume(_PairModel(), raw, (6, 6, 6), (1, 1, 1), 1, OFFSETS, 1.5, "l2", "none")
    plain = predict_volume(_ZBiased(), raw, (6, 6, 6), (1, 1, 1), 1, OFFSETS, 1.5, "l2", "none")
    averaged = predict_volume(_ZBiased(), raw, (6, 6, 6), (1, 1, 1), 1, OFFSETS, 1.5, "l2", "permutations")
    inner = (slice(1, None),) * 3
    bias = {axis: np.abs(averaged["predicted_affinities"][axis][inner] - exact["predicted_affinities"][axis][inner]).mean()
            for axis in range(3)}
    # Without TTA all the bias sits in channel 0; averaged, each nearest-neighbour channel carries a third of it.
    assert np.abs(plain["predicted_affinities"][1:3][(slice(None), *inner)]
                  - exact["predicted_affinities"][1:3][(slice(None), *inner)]).max() < 1e-6
    assert max(bias.values()) < 2 * min(bias.values()) and min(bias.values()) > 0.01
