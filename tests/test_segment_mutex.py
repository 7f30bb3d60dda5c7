"""Mutex Watershed: affinity convention, strides, mask, seeds; the fast implementation against elf and mwatershed."""

from __future__ import annotations

import mwatershed
import numpy as np
import pytest

from melecole.evaluate import evaluate_segmentation
from melecole.segment.affinities import valid_mask
from melecole.segment.mutex import mutex_watershed

OFFSETS = [
    (-1, 0, 0), (0, -1, 0), (0, 0, -1),
    (-2, 0, 0), (0, -3, 0), (0, 0, -3), (-1, -2, -2), (0, 3, -3),
]


def _blocks() -> np.ndarray:
    """Three objects: two side by side for z < 2 (split at x = 3), one filling z >= 2."""
    gt = np.full((4, 6, 7), 3, dtype=np.uint64)
    gt[:2, :, :3] = 1
    gt[:2, :, 3:] = 2
    return gt


def _perfect_affinities(gt: np.ndarray, offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """1 where v and v + o are in the same object, 0 across objects and outside the volume."""
    affs = np.zeros((len(offsets),) + gt.shape, dtype=np.float32)
    for c, offset in enumerate(offsets):
        src = tuple(slice(max(0, -d), n - max(0, d)) for n, d in zip(gt.shape, offset))
        dst = tuple(slice(max(0, d), n - max(0, -d)) for n, d in zip(gt.shape, offset))
        affs[(c,) + src] = gt[src] == gt[dst]
    return affs


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True iff the labels of a and b correspond one to one (a bijection between ids)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize(
    ("strides", "randomize"), [((1, 1, 1), False), ((1, 2, 2), False), ((2, 2, 2), True)]
)
def test_perfect_affinities_give_the_ground_truth(strides: tuple[int, int, int], randomize: bool) -> None:
    gt = _blocks()
    seg = mutex_watershed(_perfect_affinities(gt, OFFSETS), OFFSETS, strides=strides, randomize_strides=randomize)
    assert seg.dtype == np.uint64 and seg.shape == gt.shape
    assert _same_partition(seg, gt)
    np.testing.assert_array_equal(np.unique(seg), [1, 2, 3])


@pytest.mark.parametrize("sign", [-1, 1])
def test_offset_direction_convention(sign: int) -> None:
    # One row of 6 voxels; the only cut is between x = 2 and x = 3.
    offsets = [(sign, 0, 0), (0, sign, 0), (0, 0, sign), (0, 0, 2 * sign)]
    gt = np.array([1, 1, 1, 2, 2, 2], dtype=np.uint64).reshape(1, 1, 6)
    affs = _perfect_affinities(gt, offsets)
    # Channel (0, 0, -1) stores the cut at x = 3 (compares 3 with 2); (0, 0, 1) stores it at x = 2.
    cut_at = 3 if sign < 0 else 2
    assert affs[2, 0, 0, cut_at] == 0 and affs[2, 0, 0].sum() == 4
    seg = mutex_watershed(affs, offsets, strides=(1, 1, 1))
    np.testing.assert_array_equal(seg[0, 0], [1, 1, 1, 2, 2, 2])
    # The same cut written at the neighbouring voxel is a different cut, and is not obeyed.
    shifted = np.ones_like(affs)
    shifted[2, 0, 0, cut_at + sign] = 0.0
    shifted[3] = 0.2  # repulsion everywhere, weaker than the attractive edges: the cut decides
    shifted *= valid_mask(gt.shape, offsets)
    assert not _same_partition(mutex_watershed(shifted, offsets, strides=(1, 1, 1)), gt)


def test_all_one_affinities_give_one_segment() -> None:
    affs = np.ones((len(OFFSETS), 3, 5, 5), dtype=np.float32)
    seg = mutex_watershed(affs, OFFSETS)
    np.testing.assert_array_equal(seg, 1)


def test_strong_repulsion_separates_every_repulsive_pair() -> None:
    affs = np.zeros((len(OFFSETS), 4, 6, 7), dtype=np.float32)
    seg = mutex_watershed(affs, OFFSETS, strides=(1, 1, 1))
    n_segments = len(np.unique(seg))
    assert n_segments > 10
    np.testing.assert_array_equal(np.unique(seg), np.arange(1, n_segments + 1))
    # Every kept repulsive edge is a mutex constraint: its two voxels end up apart.
    for offset in OFFSETS[3:]:
        src = tuple(slice(max(0, -d), n - max(0, d)) for n, d in zip(seg.shape, offset))
        dst = tuple(slice(max(0, d), n - max(0, -d)) for n, d in zip(seg.shape, offset))
        assert np.all(seg[src] != seg[dst]), offset


def test_mask_gives_background_and_consecutive_ids() -> None:
    gt = _blocks()
    mask = np.ones(gt.shape, dtype=bool)
    mask[:, :, 5] = False  # a plane through objects 2 and 3
    mask[3, 0, 0] = False
    seg = mutex_watershed(_perfect_affinities(gt, OFFSETS), OFFSETS, mask=mask)
    assert np.all(seg[~mask] == 0) and np.all(seg[mask] > 0)
    np.testing.assert_array_equal(np.unique(seg), np.arange(0, seg.max() + 1))
    # Cutting the plane x = 5 out splits objects 2 and 3 in two pieces each.
    assert seg.max() == 5
    assert _same_partition(seg[mask], (gt * 10 + (np.arange(7) > 5))[mask])


def test_input_is_not_modified_and_random_strides_are_seeded() -> None:
    rng = np.random.default_rng(3)
    affs = rng.uniform(0.0, 1.0, size=(len(OFFSETS), 4, 8, 8)).astype(np.float32)
    before = affs.copy()
    global_state = np.random.get_state()[1].copy()
    first = mutex_watershed(affs, OFFSETS, randomize_strides=True, seed=7)
    second = mutex_watershed(affs, OFFSETS, randomize_strides=True, seed=7)
    np.testing.assert_array_equal(affs, before)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(np.random.get_state()[1], global_state)  # global RNG untouched
    other = mutex_watershed(affs, OFFSETS, randomize_strides=True, seed=8)
    assert not np.array_equal(first, other)


def test_dropping_repulsive_edges_by_stride_lets_objects_merge() -> None:
    # Two voxels joined by a weak attractive edge and held apart by one strong repulsive edge at x = 2.
    offsets = [(0, 0, -1), (0, -1, 0), (-1, 0, 0), (0, 0, -2)]
    affs = np.ones((4, 1, 1, 3), dtype=np.float32)
    affs[0] = 0.4
    affs[3] = 0.1
    affs *= valid_mask((1, 1, 3), offsets)
    assert len(np.unique(mutex_watershed(affs, offsets, strides=(1, 1, 1)))) == 2
    # Stride 3 along x keeps repulsive edges at x = 0 only, where (0, 0, -2) has no partner.
    np.testing.assert_array_equal(mutex_watershed(affs, offsets, strides=(1, 1, 3)), 1)


@pytest.mark.parametrize(("noise", "seed"), [(0.25, 4), (0.4, 5)])
def test_agrees_with_mwatershed_on_noisy_affinities(noise: float, seed: int) -> None:
    gt = _blocks()
    rng = np.random.default_rng(seed)
    perfect = _perfect_affinities(gt, OFFSETS)
    # Continuous noise: no two edges share a weight, so the greedy order is unique.
    affs = np.clip(0.15 + 0.7 * perfect + rng.normal(scale=noise, size=perfect.shape), 0.01, 0.99)
    affs = affs.astype(np.float32)
    ours = mutex_watershed(affs, OFFSETS, strides=(1, 1, 1))
    # mwatershed takes signed weights: > 0 merges, < 0 repels, processed by decreasing magnitude.
    signed = affs.astype(np.float64)
    signed[3:] = -(1.0 - signed[3:])
    theirs = mwatershed.agglom(signed, [list(o) for o in OFFSETS])
    assert 3 < len(np.unique(ours)) < gt.size // 2  # noisy enough to matter, not shattered
    assert _same_partition(ours, theirs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attractive": 4}, "attractive"),
        ({"strides": (1, 2)}, "strides"),
        ({"offsets": OFFSETS[:-1]}, "offset"),
        ({"mask": np.ones((2, 2, 2), bool)}, "mask"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    arguments = {"affinities": np.ones((len(OFFSETS), 3, 4, 4), np.float32), "offsets": OFFSETS, **kwargs}
    with pytest.raises(ValueError, match=message):
        mutex_watershed(**arguments)


def test_affinities_outside_unit_interval_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mutex_watershed(np.full((len(OFFSETS), 2, 3, 3), 1.5, np.float32), OFFSETS)


def test_seeds_keep_two_objects_apart_that_affinities_would_merge_and_hold_each_seed_together() -> None:
    gt = _blocks()
    affs = _perfect_affinities(gt, OFFSETS)
    affs[:, :2] = 1.0  # z < 2: nothing separates objects 1 and 2 any more
    assert len(np.unique(mutex_watershed(affs, OFFSETS, strides=(1, 1, 1)))) == 2
    seeds = np.zeros(gt.shape, dtype=np.int64)
    seeds[0, 0, 0] = 40  # inside object 1
    seeds[1, 5, 6] = 7  # inside object 2
    seeded = mutex_watershed(affs, OFFSETS, strides=(1, 1, 1), seeds=seeds)
    assert seeded[0, 0, 0] != seeded[1, 5, 6]
    np.testing.assert_array_equal(np.unique(seeded), np.arange(1, len(np.unique(seeded)) + 1))
    # A seed spanning two objects joins them even where every affinity says cut.
    perfect = _perfect_affinities(gt, OFFSETS)
    across = np.zeros(gt.shape, dtype=np.int64)
    across[0, 0, 0] = across[0, 0, 6] = 3
    joined = mutex_watershed(perfect, OFFSETS, strides=(1, 1, 1), seeds=across)
    assert joined[0, 0, 0] == joined[0, 0, 6]


@pytest.mark.parametrize(("noise", "seed"), [(0.25, 4), (0.4, 5)])
def test_an_empty_seed_volume_gives_the_unseeded_partition(noise: float, seed: int) -> None:
    gt = _blocks()
    rng = np.random.default_rng(seed)
    affs = np.clip(0.15 + 0.7 * _perfect_affinities(gt, OFFSETS) + rng.normal(scale=noise, size=(len(OFFSETS),) + gt.shape),
                   0.01, 0.99).astype(np.float32)
    mask = np.ones(gt.shape, dtype=bool)
    mask[3, 0, :] = False
    for kwargs in ({}, {"mask": mask}, {"strides": (1, 2, 2)}):
        plain = mutex_watershed(affs, OFFSETS, **{"strides": (1, 1, 1), **kwargs})
        seeded = mutex_watershed(affs, OFFSETS, **{"strides": (1, 1, 1), **kwargs}, seeds=np.zeros(gt.shape, np.uint64))
        assert _same_partition(plain, seeded)
        if "mask" in kwargs:
            assert (seeded[~mask] == 0).all() and (seeded[mask] > 0).all()


def test_seeds_of_the_wrong_shape_are_rejected() -> None:
    gt = _blocks()
    with pytest.raises(ValueError, match="seeds"):
        mutex_watershed(_perfect_affinities(gt, OFFSETS), OFFSETS, seeds=np.zeros((2, 2, 2), np.int64))


# --- The fast implementation against the libraries -----------------------------------------------

# segment.offsets of params.yaml: 3 attractive nearest neighbours, 9 long-range repulsive.
DEFAULT_OFFSETS = [
    (-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -3, 0), (0, 0, -3),
    (-9, 0, 0), (0, -9, 0), (0, 0, -9), (-6, -6, 0), (0, -6, -6), (-6, 0, -6),
]


def _smooth_affinities(shape: tuple[int, int, int], seed: int, offsets=OFFSETS) -> np.ndarray:
    """Continuous (tie-free) smooth random affinities in [0, 1], float32."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.uniform(size=(len(offsets),) + shape), (0, 1, 2, 2))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * valid_mask(shape, offsets)).astype(np.float32)


def _predicted_affinities(labels: np.ndarray, offsets, seed: int, noise: float = 1.5) -> np.ndarray:
    """Affinities like a network's: sigmoid(+-3 + smooth noise) of same-object pairs, float32."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    same = 2.0 * _perfect_affinities(labels, offsets) - 1.0
    field = ndi.gaussian_filter(rng.standard_normal(same.shape), (0, 0.5, 2, 2))
    affs = 1.0 / (1.0 + np.exp(-(3.0 * same + noise * field / field.std())))
    return (affs * valid_mask(labels.shape, offsets)).astype(np.float32)


def _synthetic_labels(seed: int) -> np.ndarray:
    from melecole.data.synthetic import make_synthetic_volume

    return make_synthetic_volume((16, 64, 64), neurites=20, seed=seed)[1].astype(np.uint64)


@pytest.mark.parametrize(
    ("seed", "strides", "randomize", "masked"),
    [(0, (1, 1, 1), False, False), (1, (1, 2, 2), False, False), (2, (2, 1, 3), False, True),
     (3, (1, 2, 2), True, False), (4, (2, 2, 2), True, True)],
)
def test_fast_is_elf_exactly_on_continuous_affinities(seed, strides, randomize, masked) -> None:
    affs = _smooth_affinities((8, 24, 24), seed)
    mask = np.random.default_rng(seed).random(affs.shape[1:]) > 0.15 if masked else None
    arguments = {"strides": strides, "randomize_strides": randomize, "mask": mask, "seed": seed}
    fast = mutex_watershed(affs, OFFSETS, **arguments)
    elf = mutex_watershed(affs, OFFSETS, **arguments, implementation="elf")
    assert 10 < fast.max() < fast.size // 4  # many segments, not shattered
    np.testing.assert_array_equal(fast, elf)  # the same ids too: both number by first appearance


def test_fast_is_elf_when_many_different_weights_share_a_bucket() -> None:
    # All weights within a few 1e-5 of 0.5: every float bucket holds many different weights,
    # and attractive and repulsive weights compare only exactly.
    affs = 0.5 + 4e-5 * (_smooth_affinities((6, 20, 20), 7) - 0.5)
    affs = (affs * valid_mask(affs.shape[1:], OFFSETS)).astype(np.float32)
    fast = mutex_watershed(affs, OFFSETS, strides=(1, 1, 1))
    elf = mutex_watershed(affs, OFFSETS, strides=(1, 1, 1), implementation="elf")
    assert fast.max() > 10
    np.testing.assert_array_equal(fast, elf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_is_elf_exactly_on_quantised_predictions_with_ties(seed: int) -> None:
    labels = _synthetic_labels(seed)
    stored = np.rint(_predicted_affinities(labels, DEFAULT_OFFSETS, seed) * 255).astype(np.uint8)
    decoded = stored.astype(np.float32) / np.float32(255)
    assert len(np.unique(stored)) <= 256 < stored.size // 100  # ties everywhere
    fast = mutex_watershed(stored, DEFAULT_OFFSETS, strides=(1, 1, 1))
    np.testing.assert_array_equal(fast, mutex_watershed(decoded, DEFAULT_OFFSETS, strides=(1, 1, 1)))
    np.testing.assert_array_equal(fast, mutex_watershed(decoded, DEFAULT_OFFSETS, strides=(1, 1, 1),
                                                        implementation="elf"))
    scores = evaluate_segmentation(fast, labels)
    assert scores["vi_split"] + scores["vi_merge"] < 0.2  # realistic: a good segmentation
    # mwatershed breaks ties in another order: a slightly different partition.
    other = mutex_watershed(stored, DEFAULT_OFFSETS, strides=(1, 1, 1), implementation="mwatershed")
    between = evaluate_segmentation(other, fast)
    assert between["vi_split"] + between["vi_merge"] < 0.02


def test_equal_weights_go_by_edge_index_attractive_first() -> None:
    # Three voxels in a row; both attractive edges and the repulsive edge between the ends weigh
    # exactly the same. By index, channel 0 (attractive) comes before channel 3 (repulsive): the
    # row merges before the mutex is seen. Repulsive-first would split it.
    offsets = [(0, 0, -1), (0, -1, 0), (-1, 0, 0), (0, 0, -2)]
    from melecole.segment.mutex_fast import weight_table

    table = weight_table()
    level = next(k for k in range(256) if table[0, k] in table[1])
    partner = int(np.flatnonzero(table[1] == table[0, level])[0])
    affs = np.zeros((4, 1, 1, 3), dtype=np.uint8)
    affs[0, 0, 0, 1:] = level
    affs[3, 0, 0, 2] = partner
    for implementation in ("fast", "elf"):
        stored = affs if implementation == "fast" else affs.astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(
            mutex_watershed(stored, offsets, strides=(1, 1, 1), implementation=implementation), 1)
    affs[3, 0, 0, 2] = partner - 1  # the mutex now weighs more: processed first, the row splits
    assert mutex_watershed(affs, offsets, strides=(1, 1, 1)).max() == 2
    # The same with float weights that are no uint8 levels: 0.75 attracts exactly as strongly as
    # 0.25 repels.
    floats = np.zeros((4, 1, 1, 3), dtype=np.float32)
    floats[0, 0, 0, 1:] = 0.75
    floats[3, 0, 0, 2] = 0.25
    for implementation in ("fast", "elf"):
        np.testing.assert_array_equal(
            mutex_watershed(floats, offsets, strides=(1, 1, 1), implementation=implementation), 1)
    floats[3, 0, 0, 2] = 0.2499
    assert mutex_watershed(floats, offsets, strides=(1, 1, 1)).max() == 2


@pytest.mark.parametrize("seed", [5, 6])
def test_fast_seeded_is_mwatershed_seeded(seed: int) -> None:
    rng = np.random.default_rng(seed)
    affs = np.clip(_smooth_affinities((8, 24, 24), seed), 0.02, 0.98)  # no zero: mwatershed reads 0 as repulsive
    affs[valid_mask(affs.shape[1:], OFFSETS) == 0] = 0.0
    seeds = np.zeros(affs.shape[1:], dtype=np.int64)
    for seed_id in (3, 9, 40, 41):
        z, y, x = rng.integers(0, 8), rng.integers(0, 20), rng.integers(0, 20)
        seeds[z, y:y + 3, x:x + 3] = seed_id
    fast = mutex_watershed(affs, OFFSETS, strides=(1, 2, 2), seeds=seeds)
    rust = mutex_watershed(affs, OFFSETS, strides=(1, 2, 2), seeds=seeds, implementation="mwatershed")
    assert _same_partition(fast, rust)
    for seed_id in (3, 9, 40, 41):
        assert len(np.unique(fast[seeds == seed_id])) == 1
    assert len(np.unique([fast[seeds == s][0] for s in (3, 9, 40, 41)])) == 4


def test_uint8_is_read_as_probability_times_255_and_not_copied_to_float() -> None:
    affs = np.rint(_smooth_affinities((6, 20, 20), 8) * 255).astype(np.uint8)
    before = affs.copy()
    ours = mutex_watershed(affs, OFFSETS, strides=(1, 1, 1))
    np.testing.assert_array_equal(affs, before)
    np.testing.assert_array_equal(ours, mutex_watershed(affs / 255.0, OFFSETS, strides=(1, 1, 1),
                                                        implementation="elf"))
    # Values 0 and 1 of a uint8 array are 0 and 1/255, not affinities 0 and 1.
    ones = np.ones((len(OFFSETS), 3, 5, 5), dtype=np.uint8)
    assert mutex_watershed(ones, OFFSETS, strides=(1, 1, 1)).max() > 1


def test_unknown_implementation_and_seeds_for_elf_are_rejected() -> None:
    affs = np.ones((len(OFFSETS), 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="implementation"):
        mutex_watershed(affs, OFFSETS, implementation="bioimage")
    with pytest.raises(ValueError, match="elf"):
        mutex_watershed(affs, OFFSETS, seeds=np.ones((3, 4, 4), np.int64), implementation="elf")
