"""Embedding -> affinity maps: hand-computed values, offset direction, chunking, borders."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from melecole.segment.affinities import cosine_affinities, embedding_affinities, valid_mask


def _line(*vectors: tuple[float, ...]) -> np.ndarray:
    """An embedding (E, 1, 1, X) from one vector per x position."""
    return np.asarray(vectors, dtype=np.float32).T[:, None, None, :]


def test_hand_computed_l2_and_l1_values() -> None:
    # delta_d = 1.5: the affinity reaches 0 at distance 3.
    emb = _line((0.0, 0.0), (1.0, 0.0), (2.0, 1.0))
    offsets = [(0, 0, -1), (0, 0, 1)]
    l2 = embedding_affinities(emb, offsets, delta_d=1.5, norm="l2")
    l1 = embedding_affinities(emb, offsets, delta_d=1.5, norm="l1")
    assert l2.shape == (2, 1, 1, 3) and l2.dtype == np.float32
    # channel (0, 0, -1): x=1 vs x=0 at distance 1; x=2 vs x=1 at L2 distance sqrt(2), L1 distance 2.
    np.testing.assert_allclose(l2[0, 0, 0], [0.0, 4 / 9, (3 - math.sqrt(2)) ** 2 / 9], rtol=1e-6)
    np.testing.assert_allclose(l1[0, 0, 0], [0.0, 4 / 9, 1 / 9], rtol=1e-6)
    # channel (0, 0, 1) holds the same pairs, stored at the other voxel of each pair.
    np.testing.assert_allclose(l2[1, 0, 0], [4 / 9, (3 - math.sqrt(2)) ** 2 / 9, 0.0], rtol=1e-6)


def test_identical_embeddings_give_one_and_far_ones_zero() -> None:
    rng = np.random.default_rng(0)
    vector = rng.normal(size=(5, 1, 1, 1)).astype(np.float32)
    same = np.broadcast_to(vector, (5, 3, 4, 4)).copy()
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    affs = embedding_affinities(same, offsets, delta_d=0.5)
    mask = valid_mask(same.shape[1:], offsets)
    assert np.all(affs[mask] == 1.0)

    # Exactly 2 * delta_d apart, and further: 0 for both norms.
    far = _line((0.0,), (1.0,), (5.0,))
    for norm in ("l1", "l2"):
        affs = embedding_affinities(far, [(0, 0, 1)], delta_d=0.5, norm=norm)
        np.testing.assert_array_equal(affs[0, 0, 0], [0.0, 0.0, 0.0])


def test_step_edge_in_z_shows_at_the_documented_channels() -> None:
    emb = np.zeros((3, 4, 3, 3), dtype=np.float32)
    emb[:, 2:] = 10.0  # a step edge between z=1 and z=2
    offsets = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 0, 1)]
    affs = embedding_affinities(emb, offsets, delta_d=1.0)
    # (-1, 0, 0) compares z with z-1: the edge is seen at z=2; z=0 has no partner.
    np.testing.assert_array_equal(affs[0, :, 1, 1], [0.0, 1.0, 0.0, 1.0])
    # (1, 0, 0) compares z with z+1: the edge is seen at z=1; z=3 has no partner.
    np.testing.assert_array_equal(affs[1, :, 1, 1], [1.0, 0.0, 1.0, 0.0])
    # In-plane channels never cross the edge.
    np.testing.assert_array_equal(affs[2, :, 1:, :], 1.0)
    np.testing.assert_array_equal(affs[3, :, :, :2], 1.0)


def test_out_of_volume_pairs_are_zero_and_valid_mask_is_exact() -> None:
    mask = valid_mask((2, 3, 4), [(0, -1, 2)])
    expected = np.zeros((1, 2, 3, 4), dtype=bool)
    expected[0, :, 1:, :2] = True
    np.testing.assert_array_equal(mask, expected)

    offsets = [(-1, 0, 0), (0, 2, -1), (3, 0, 0), (0, 0, 9)]
    emb = np.ones((2, 3, 4, 5), dtype=np.float32)
    affs = embedding_affinities(emb, offsets)
    # Identical embeddings: affinity is 1 exactly where the partner exists, else 0.
    np.testing.assert_array_equal(affs, valid_mask((3, 4, 5), offsets).astype(np.float32))
    assert not affs[2].any() and not affs[3].any()  # offsets longer than the volume


def _reference(emb: np.ndarray, offsets: list[tuple[int, int, int]], delta_d: float) -> np.ndarray:
    """Voxel-by-voxel evaluation of the formula."""
    _, nz, ny, nx = emb.shape
    out = np.zeros((len(offsets), nz, ny, nx))
    for c, (dz, dy, dx) in enumerate(offsets):
        for z, y, x in itertools.product(range(nz), range(ny), range(nx)):
            if 0 <= z + dz < nz and 0 <= y + dy < ny and 0 <= x + dx < nx:
                d = np.linalg.norm(emb[:, z, y, x].astype(np.float64) - emb[:, z + dz, y + dy, x + dx])
                out[c, z, y, x] = (max(0.0, 2 * delta_d - d) / (2 * delta_d)) ** 2
    return out


def test_chunked_equals_unchunked_and_voxelwise_reference() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(scale=0.6, size=(4, 7, 5, 6)).astype(np.float32)
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (2, -1, 1), (0, 4, -5)]
    whole = embedding_affinities(emb, offsets, delta_d=1.0, chunk_voxels=10**9)
    np.testing.assert_allclose(whole, _reference(emb, offsets, 1.0), atol=1e-6)
    assert 0.05 < whole.mean() < 0.95  # a mix of near and far pairs, not a degenerate case
    for chunk in (1, 30, 61, 95):  # one z-plane, one plane, two planes, three planes per slab
        np.testing.assert_array_equal(embedding_affinities(emb, offsets, delta_d=1.0, chunk_voxels=chunk), whole)


def test_torch_and_numpy_inputs_agree_and_are_not_modified() -> None:
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(3, 4, 4, 4))  # float64 numpy
    before = emb.copy()
    tensor = torch.tensor(emb, dtype=torch.float32, requires_grad=True)
    offsets = [(0, 0, -1), (-2, 1, 0)]
    from_numpy = embedding_affinities(emb, offsets)
    from_torch = embedding_affinities(tensor, offsets)
    np.testing.assert_allclose(from_numpy, from_torch, atol=1e-6)
    np.testing.assert_array_equal(emb, before)
    assert isinstance(from_torch, np.ndarray) and from_torch.dtype == np.float32


def test_cosine_affinities_hand_computed() -> None:
    emb = _line((1.0, 0.0), (1.0, 1.0), (-1.0, 0.0), (0.0, 0.0))
    affs = cosine_affinities(emb, [(0, 0, -1)])
    # 45 degrees -> cos; 135 degrees -> negative, clipped to 0; zero vector -> 0; x=0 has no partner.
    np.testing.assert_allclose(affs[0, 0, 0], [0.0, 1 / math.sqrt(2), 0.0, 0.0], rtol=1e-6)
    scaled = _line((1.0, 2.0), (3.0, 6.0))
    np.testing.assert_allclose(cosine_affinities(scaled, [(0, 0, 1)])[0, 0, 0], [1.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l3"}, "norm"),
        ({"delta_d": 0.0}, "delta_d"),
        ({"offsets": [(1, 0)]}, "offsets"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    arguments = {"embedding": np.zeros((2, 2, 2, 2), np.float32), "offsets": [(1, 0, 0)], **kwargs}
    with pytest.raises(ValueError, match=message):
        embedding_affinities(**arguments)


def test_embedding_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        embedding_affinities(np.zeros((2, 3, 4), np.float32), [(1, 0, 0)])
