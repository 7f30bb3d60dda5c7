"""Tests of VI split / merge, adapted Rand error and the contingency table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as skimage_arand
from skimage.metrics import variation_of_information as skimage_vi

from melecole.errors import MelecoleError
from melecole.evaluate import (
    adapted_rand_error,
    contingency,
    evaluate_pooled,
    evaluate_segmentation,
    variation_of_information,
)

DATA = Path(__file__).parents[1] / "datasets" / "flyem-fib-small"

# Peers' numbers for the bundled volume: VI from gala's test-suite, arand from
# skimage 0.26 adapted_rand_error(gt, seg); ground-truth 0 ignored.
REFERENCE = {
    "test-ws": (1.6477441186020116, 0.18452859812791342, 0.3659741088178131),
    "test-seg1": (0.3045386084237077, 0.3648818741376926, 0.11213143279202553),
    "test-seg4": (0.23417579799761237, 0.3950471409984648, 0.12380124044756946),
}


def _stack(name: str) -> np.ndarray:
    with h5py.File(DATA / f"{name}.lzf.h5", "r") as f:
        return f["stack"][:]


@pytest.fixture(scope="module")
def fib_gt() -> np.ndarray:
    return _stack("test-gt")


# ---------------------------------------------------------------- reference data


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_scores_of_bundled_volume(name, fib_gt):
    seg = _stack(name)
    assert seg.shape == fib_gt.shape == (50, 100, 200)
    split, merge, arand = REFERENCE[name]

    scores = evaluate_segmentation(seg, fib_gt)

    assert set(scores) == {"vi_split", "vi_merge", "arand"}
    assert all(type(v) is float for v in scores.values())
    assert scores["vi_split"] == pytest.approx(split, abs=1e-9)
    assert scores["vi_merge"] == pytest.approx(merge, abs=1e-9)
    assert scores["arand"] == pytest.approx(arand, abs=1e-9)
    assert variation_of_information(seg, fib_gt) == pytest.approx((split, merge), abs=1e-9)
    assert adapted_rand_error(seg, fib_gt) == pytest.approx(arand, abs=1e-9)


def test_bundled_volume_is_scored_well_under_a_second(fib_gt):
    seg = _stack("test-ws")
    evaluate_segmentation(seg, fib_gt)  # warm-up: imports and first-call overheads
    start = time.perf_counter()
    evaluate_segmentation(seg, fib_gt)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------- independent references


def _entropy_bits(*labels: np.ndarray) -> float:
    """Joint entropy of label arrays (M,), from counts of distinct label tuples."""
    _, counts = np.unique(np.stack(labels), axis=1, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _direct_vi(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    keep = gt != 0
    s, g = seg[keep].astype(np.int64), gt[keep].astype(np.int64)
    joint = _entropy_bits(s, g)
    return joint - _entropy_bits(g), joint - _entropy_bits(s)


def _random_pair(rng: np.random.Generator, shape, n_seg: int, n_gt: int):
    """A ground truth of blocky objects with unlabelled voxels and a noisy segmentation."""
    gt = rng.integers(0, n_gt, size=shape)  # (Z, Y, X), 0 = unlabelled
    seg = np.where(rng.random(shape) < 0.7, gt % max(n_seg, 1), rng.integers(0, n_seg, shape))
    return seg.astype(np.int64), gt.astype(np.int64)


def _huge_ids(labels: np.ndarray, rng: np.random.Generator, keep_zero: bool) -> np.ndarray:
    """Relabel compact labels to distinct uint64 ids spread up to 2**64 - 1."""
    n = int(labels.max()) + 1
    table = np.unique(rng.integers(2**40, 2**64 - 1, size=4 * n, dtype=np.uint64))
    table = rng.permutation(table)[:n]
    table[-1] = np.uint64(2**64 - 1)  # the largest possible id must work too
    if keep_zero:
        table[0] = 0
    return table[labels]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_skimage_and_direct_entropies_on_random_volumes(seed):
    rng = np.random.default_rng(seed)
    seg, gt = _random_pair(rng, (6, 9, 11), n_seg=int(rng.integers(2, 30)), n_gt=12)

    split, merge = variation_of_information(seg, gt)
    arand = adapted_rand_error(seg, gt)

    # skimage.metrics.variation_of_information(image0, image1) returns
    # [H(image1 | image0), H(image0 | image1)] and ignores labels of image0.
    sk_split, sk_merge = skimage_vi(gt, seg, ignore_labels=[0])
    assert (split, merge) == pytest.approx((sk_split, sk_merge), abs=1e-12)
    assert (split, merge) == pytest.approx(_direct_vi(seg, gt), abs=1e-12)
    assert arand == pytest.approx(skimage_arand(gt, seg)[0], abs=1e-12)
    assert split > 0.1 and merge > 0.1 and 0.05 < arand < 1.0


@pytest.mark.parametrize("seed", [3, 4])
def test_huge_uint64_ids_score_like_compact_ids(seed):
    rng = np.random.default_rng(seed)
    seg, gt = _random_pair(rng, (5, 8, 7), n_seg=9, n_gt=15)
    huge_seg = _huge_ids(seg, rng, keep_zero=False)
    huge_gt = _huge_ids(gt, rng, keep_zero=True)
    assert huge_seg.dtype == huge_gt.dtype == np.uint64 and huge_gt.max() == 2**64 - 1

    scores = evaluate_segmentation(huge_seg, huge_gt)

    # skimage sizes its table by the largest id, so it only gets the compact labels.
    sk_split, sk_merge = skimage_vi(gt, seg, ignore_labels=[0])
    assert scores["vi_split"] == pytest.approx(sk_split, abs=1e-12)
    assert scores["vi_merge"] == pytest.approx(sk_merge, abs=1e-12)
    assert scores["arand"] == pytest.approx(skimage_arand(gt, seg)[0], abs=1e-12)


# ---------------------------------------------------------------- hand-computed cases


def test_identical_segmentation_scores_zero():
    gt = np.array([[1, 1, 2], [2, 3, 3]], dtype=np.uint8)
    assert evaluate_segmentation(gt, gt) == {"vi_split": 0.0, "vi_merge": 0.0, "arand": 0.0}


def test_perfect_scores_are_positive_zero_in_json():
    # A pure over-segmentation has no merge error; metrics JSON must not read "-0.0".
    gt = np.array([1, 1, 1, 2, 2, 2], dtype=np.int32)
    seg = np.arange(6, dtype=np.int32)
    scores = evaluate_segmentation(seg, gt)
    assert scores["vi_merge"] == 0.0 and scores["vi_split"] > 0.0
    assert "-" not in json.dumps(scores)


def test_split_of_one_object_into_halves_costs_one_bit_of_split():
    gt = np.ones((2, 2, 4), dtype=np.int32)
    seg = np.zeros_like(gt)
    seg[:, :, 2:] = 7  # two equal halves
    assert variation_of_information(seg, gt) == pytest.approx((1.0, 0.0), abs=1e-12)
    # Pairs: 16*15 in gt, 2*8*7 in seg and shared -> 1 - 112 / ((240 + 112) / 2).
    assert adapted_rand_error(seg, gt) == pytest.approx(1.0 - 112.0 / 176.0, abs=1e-12)


def test_merge_of_two_equal_objects_costs_one_bit_of_merge():
    gt = np.zeros((3, 4), dtype=np.int64)
    gt[:, :2], gt[:, 2:] = 5, 9
    seg = np.full_like(gt, 4)
    assert variation_of_information(seg, gt) == pytest.approx((0.0, 1.0), abs=1e-12)


def test_four_way_split_with_uneven_sizes():
    # One object of 8 voxels split 4/2/1/1: H = 0.5*1 + 0.25*2 + 2 * 0.125*3 = 1.75 bits.
    gt = np.full(8, 3, dtype=np.int16)
    seg = np.array([1, 1, 1, 1, 2, 2, 3, 4], dtype=np.int16)
    assert variation_of_information(seg, gt) == pytest.approx((1.75, 0.0), abs=1e-12)


def test_segmentation_label_zero_is_an_ordinary_label():
    gt = np.array([1, 1, 2, 2], dtype=np.int32)
    seg = np.zeros_like(gt)  # nothing segmented: one big segment 0
    assert variation_of_information(seg, gt) == pytest.approx((0.0, 1.0), abs=1e-12)


def test_relabelling_and_voxel_order_do_not_change_scores():
    rng = np.random.default_rng(5)
    seg, gt = _random_pair(rng, (4, 6, 10), n_seg=8, n_gt=10)
    expected = evaluate_segmentation(seg, gt)

    seg_perm = rng.permutation(100)[seg]  # injective relabelling of every segment
    gt_perm = np.concatenate([[0], 1 + rng.permutation(50)])[gt]  # keep 0 = unlabelled
    order = rng.permutation(seg.size)

    assert evaluate_segmentation(seg_perm, gt_perm) == pytest.approx(expected, abs=1e-12)
    assert evaluate_segmentation(
        seg.ravel()[order], gt.ravel()[order]
    ) == pytest.approx(expected, abs=1e-12)


def test_voxels_with_ground_truth_zero_do_not_count():
    gt = np.array([0, 0, 0, 1, 1, 2, 2], dtype=np.int32)
    seg = np.array([9, 8, 1, 1, 1, 2, 2], dtype=np.int32)
    other = np.array([5, 5, 5, 1, 1, 2, 2], dtype=np.int32)  # differs only where gt is 0
    scores = evaluate_segmentation(seg, gt)
    assert scores == {"vi_split": 0.0, "vi_merge": 0.0, "arand": 0.0}
    assert evaluate_segmentation(other, gt) == scores
    # Without ignoring, the unlabelled voxels are an object segment 1 merges with.
    split, merge = variation_of_information(seg, gt, ignore_gt=())
    assert split > 0.0 and merge > 0.0
    assert adapted_rand_error(seg, gt, ignore_gt=()) > 0.0


def test_custom_ignored_labels():
    gt = np.array([1, 1, 2, 2, 3, 3], dtype=np.int64)
    seg = np.array([1, 1, 2, 2, 2, 2], dtype=np.int64)
    assert variation_of_information(seg, gt, ignore_gt=(3,)) == (0.0, 0.0)
    assert variation_of_information(seg, gt, ignore_gt=(2, 3)) == (0.0, 0.0)
    assert variation_of_information(seg, gt, ignore_gt=(1,))[1] == pytest.approx(1.0)


def test_split_and_merge_swap_when_arguments_swap():
    rng = np.random.default_rng(6)
    seg, gt = _random_pair(rng, (5, 5, 5), n_seg=6, n_gt=9)
    split, merge = variation_of_information(seg, gt, ignore_gt=())
    assert variation_of_information(gt, seg, ignore_gt=()) == pytest.approx((merge, split))
    assert adapted_rand_error(gt, seg, ignore_gt=()) == pytest.approx(
        adapted_rand_error(seg, gt, ignore_gt=())
    )


def test_all_singletons_give_zero_adapted_rand_error():
    labels = np.arange(1, 6, dtype=np.uint32)
    assert adapted_rand_error(labels[::-1].copy(), labels) == 0.0


# ---------------------------------------------------------------- contingency table


def test_contingency_counts_pairs_in_label_order():
    gt = np.array([[0, 7, 7], [3, 3, 7]], dtype=np.uint64)
    seg = np.array([[4, 4, 2**63], [2**63, 4, 4]], dtype=np.uint64)
    table = contingency(seg, gt)
    # rows: seg 4, 2**63; cols: gt 3, 7 (gt 0 dropped)
    np.testing.assert_array_equal(table.toarray(), [[1, 2], [1, 1]])
    # rows as above; cols: gt 0, 3, 7
    everything = contingency(seg, gt, ignore_gt=())
    np.testing.assert_array_equal(everything.toarray(), [[1, 1, 2], [0, 1, 1]])
    assert everything.dtype == np.int64 and everything.nnz == 5


# ---------------------------------------------------------------- input checks


def test_shape_mismatch_is_reported_with_both_shapes():
    with pytest.raises(MelecoleError, match=r"\(3, 4, 5\).*\(3, 4, 6\)"):
        evaluate_segmentation(np.zeros((3, 4, 5), np.int32), np.ones((3, 4, 6), np.int32))


@pytest.mark.parametrize("which", ["seg", "gt"])
def test_float_labels_are_refused_with_shape_and_dtype(which):
    ints = np.ones((2, 3, 4), dtype=np.int32)
    floats = ints.astype(np.float32)
    seg, gt = (floats, ints) if which == "seg" else (ints, floats)
    with pytest.raises(MelecoleError, match=r"\(2, 3, 4\).*float32.*integer"):
        variation_of_information(seg, gt)
    with pytest.raises(MelecoleError, match="integer"):
        adapted_rand_error(seg, gt)


def test_all_ignored_ground_truth_is_refused():
    gt = np.zeros((2, 3), dtype=np.int32)
    with pytest.raises(MelecoleError, match=r"\(2, 3\)"):
        evaluate_segmentation(np.ones_like(gt), gt)


def test_inputs_are_not_modified_and_views_are_accepted():
    rng = np.random.default_rng(7)
    seg, gt = _random_pair(rng, (6, 8, 10), n_seg=7, n_gt=8)
    seg_view, gt_view = seg[:, ::2, 1:], gt[:, ::2, 1:]  # non-contiguous views
    seg_before, gt_before = seg.copy(), gt.copy()

    scores = evaluate_segmentation(seg_view, gt_view)
    contingency(seg, gt)
    variation_of_information(seg, gt, ignore_gt=())

    np.testing.assert_array_equal(seg, seg_before)
    np.testing.assert_array_equal(gt, gt_before)
    assert scores == pytest.approx(
        evaluate_segmentation(seg_view.copy(), gt_view.copy()), abs=1e-15
    )


@pytest.mark.parametrize("seed", [5, 6])
def test_pooled_volumes_score_like_one_volume_side_by_side(seed):
    rng = np.random.default_rng(seed)
    first = _random_pair(rng, (6, 9, 11), n_seg=int(rng.integers(2, 30)), n_gt=12)
    second = _random_pair(rng, (4, 9, 7), n_seg=int(rng.integers(2, 30)), n_gt=9)
    # Side by side along x with every label of the second volume moved past the first's
    # (ground-truth 0 stays 0: it is ignored in both).
    shift_seg, shift_gt = int(first[0].max()) + 1, int(first[1].max()) + 1
    seg = np.concatenate([first[0], np.pad(second[0] + shift_seg, ((0, 2), (0, 0), (0, 0)))], axis=2)
    second_gt = np.where(second[1] > 0, second[1] + shift_gt, 0)
    gt = np.concatenate([first[1], np.pad(second_gt, ((0, 2), (0, 0), (0, 0)))], axis=2)  # padding: gt 0

    pooled = evaluate_pooled([first, second])

    assert pooled == pytest.approx(evaluate_segmentation(seg, gt), abs=1e-12)
    alone = [evaluate_segmentation(*first), evaluate_segmentation(*second)]
    weights = np.array([np.count_nonzero(first[1]), np.count_nonzero(second[1])], float)
    # VI is the labelled-voxel weighted mean of the volumes' VIs (the volume index is known
    # from either label); the adapted Rand error is not a mean, but it lies between the two.
    for key in ("vi_split", "vi_merge"):
        assert pooled[key] == pytest.approx(np.average([a[key] for a in alone], weights=weights), abs=1e-12)
    assert min(a["arand"] for a in alone) <= pooled["arand"] <= max(a["arand"] for a in alone) + 1e-12


def test_pooled_labels_never_match_across_volumes():
    # Both volumes use labels 1 and 2; pooled, the same numbers are still different objects.
    gt = np.array([[[1, 1, 2, 2]]])
    seg = np.array([[[1, 1, 1, 1]]])
    one = evaluate_segmentation(seg, gt)
    assert evaluate_pooled([(seg, gt), (seg, gt)]) == pytest.approx(one, abs=1e-12)
    assert one["vi_merge"] == pytest.approx(1.0)


def test_pooled_evaluation_refuses_nothing_and_names_bad_shapes():
    with pytest.raises(MelecoleError, match="no volumes"):
        evaluate_pooled([])
    with pytest.raises(MelecoleError, match=r"\(2, 2\).*\(2, 3\)"):
        evaluate_pooled([(np.ones((2, 2), int), np.ones((2, 2), int)), (np.ones((2, 2), int), np.ones((2, 3), int))])


# ---------------------------------------------------------------- block-by-block counting


def _reference_pairs(seg: np.ndarray, gt: np.ndarray, ignore=(0,)):
    """Distinct (seg, gt) pairs of counted voxels and their counts, by one np.unique of both."""
    keep = ~np.isin(gt.ravel(), np.array(ignore, dtype=gt.dtype)) if ignore else np.ones(gt.size, bool)
    pairs, counts = np.unique(np.stack([seg.ravel()[keep], gt.ravel()[keep]]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts


class _LazyVolume:
    """A readable volume (shape, dtype, chunks, read(region)) that records what is read."""

    def __init__(self, array: np.ndarray, chunks=None):
        self._array, self.chunks = array, chunks
        self.shape, self.dtype = array.shape, array.dtype
        self.regions: list[tuple[slice, ...]] = []

    def read(self, region):
        self.regions.append(region)
        return self._array[region].copy()


@pytest.mark.parametrize("block_voxels", [1, 7, 97, 10**6])
def test_table_does_not_depend_on_the_blocks(block_voxels):
    # 7 and 97 divide neither the volume (5 * 9 * 11) nor a plane (99); 1 cuts every voxel apart.
    rng = np.random.default_rng(8)
    seg, gt = _random_pair(rng, (5, 9, 11), n_seg=20, n_gt=12)
    whole = contingency(seg, gt, block_voxels=10**6)

    blocked = contingency(seg, gt, block_voxels=block_voxels)

    np.testing.assert_array_equal(blocked.toarray(), whole.toarray())
    assert blocked.has_canonical_format and blocked.dtype == np.int64
    assert evaluate_segmentation(seg, gt) == _scores_of(whole)


def _scores_of(table):
    from melecole.evaluate.metrics import _scores

    return _scores(table)


def test_pair_counts_of_any_partition_match_a_direct_count():
    from melecole.evaluate.pair_counts import PairCounts

    rng = np.random.default_rng(9)
    seg, gt = _random_pair(rng, (6, 10, 10), n_seg=15, n_gt=9)
    seg, gt = seg.ravel(), gt.ravel()
    cuts = np.sort(rng.choice(np.arange(1, seg.size), size=11, replace=False))
    counts = PairCounts()
    for part in rng.permutation(12):  # blocks in a shuffled order
        lo, hi = ([0, *cuts][part], [*cuts, seg.size][part])
        counts.add(seg[lo:hi], gt[lo:hi])

    got = counts.pairs()

    for column, expected in zip(got, _reference_pairs(seg, gt)):
        np.testing.assert_array_equal(column, expected)
    assert counts.voxels == np.count_nonzero(gt)


def test_blocks_with_ids_near_two_to_the_64_and_an_exact_ignore():
    rng = np.random.default_rng(10)
    seg, gt = _random_pair(rng, (4, 6, 9), n_seg=9, n_gt=13)
    huge_seg, huge_gt = _huge_ids(seg, rng, keep_zero=False), _huge_ids(gt, rng, keep_zero=True)
    huge_gt[0, 0, :3] = 2**63  # ids 2**63 and 2**63 + 1 are one float64 apart: never confused
    expected = contingency(huge_seg, huge_gt, ignore_gt=(0, 2**63 + 1), block_voxels=10**6)

    for block_voxels in (5, 54):
        table = contingency(huge_seg, huge_gt, ignore_gt=(0, 2**63 + 1), block_voxels=block_voxels)
        np.testing.assert_array_equal(table.toarray(), expected.toarray())
    assert expected.shape[1] == np.unique(huge_gt[huge_gt != 0]).size
    assert expected.sum() == np.count_nonzero(huge_gt)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64])
def test_every_integer_dtype_and_negative_ids(dtype):
    # 256 distinct labels, the extremes of the dtype among them: more than an 8-bit array's
    # positive values, which fastremap's ids of such an array could not number.
    info = np.iinfo(dtype)
    rng = np.random.default_rng(11)
    inner = rng.choice(np.arange(info.min + 1, info.max, max(1, (int(info.max) - int(info.min)) // 300)), 254,
                       replace=False)
    values = np.r_[info.min, inner, info.max].astype(dtype)
    assert np.unique(values).size == 256
    seg = rng.choice(values, size=(4, 8, 16))
    gt = rng.choice(values[:40], size=(4, 8, 16))
    zero = dtype(0)
    gt[gt == zero] = values[1]

    table = contingency(seg, gt, block_voxels=50)

    s, g, n = _reference_pairs(seg, gt)
    dense = np.zeros((np.unique(s).size, np.unique(g).size), np.int64)
    dense[np.searchsorted(np.unique(s), s), np.searchsorted(np.unique(g), g)] = n
    np.testing.assert_array_equal(table.toarray(), dense)


@pytest.mark.parametrize("n_seg", [300, 60_000])
def test_many_labels_and_unfavourable_runs_match_skimage(n_seg):
    # Labels change at nearly every voxel, so runs are single voxels: with few distinct labels
    # ids come from hashing, with many from sorting, and the pairs from a bincount or a sort.
    rng = np.random.default_rng(12)
    gt = rng.integers(0, 50, size=(8, 128, 128))
    seg = rng.integers(0, n_seg, size=gt.shape)

    split, merge = variation_of_information(seg, gt)
    arand = adapted_rand_error(seg, gt)

    sk_split, sk_merge = skimage_vi(gt, seg, ignore_labels=[0])
    assert (split, merge) == pytest.approx((sk_split, sk_merge), abs=1e-10)
    assert arand == pytest.approx(skimage_arand(gt, seg)[0], abs=1e-12)


def test_readable_volumes_are_read_in_bounded_chunk_aligned_blocks():
    from melecole.evaluate.metrics import contingency_tables, evaluate_volumes

    rng = np.random.default_rng(13)
    seg, gt = _random_pair(rng, (10, 12, 14), n_seg=25, n_gt=11)
    other = np.where(seg % 3 == 0, 0, seg)
    volumes = [_LazyVolume(seg, chunks=(4, 5, 14)), _LazyVolume(other, chunks=(4, 5, 14))]
    truth = _LazyVolume(gt)

    tables = contingency_tables(volumes, truth, block_voxels=100)
    scores = evaluate_volumes(volumes, truth, block_voxels=100)

    np.testing.assert_array_equal(tables[0].toarray(), contingency(seg, gt).toarray())
    np.testing.assert_array_equal(tables[1].toarray(), contingency(other, gt).toarray())
    assert scores == [evaluate_segmentation(seg, gt), evaluate_segmentation(other, gt)]
    for volume in (*volumes, truth):
        sizes = [np.prod([s.stop - s.start for s in region]) for region in volume.regions]
        assert max(sizes) <= 4 * 5 * 14 and sum(sizes) == 2 * seg.size  # each voxel once per pass
        assert all(region[0].start % 4 == 0 and region[1].start % 5 == 0 for region in volume.regions)


def test_readable_volumes_of_other_shapes_or_float_dtype_are_refused_before_reading():
    from melecole.evaluate.metrics import evaluate_volumes

    gt = _LazyVolume(np.ones((3, 4, 5), np.int32))
    wrong = _LazyVolume(np.ones((3, 4, 6), np.uint64))
    floats = _LazyVolume(np.ones((3, 4, 5), np.float32))
    with pytest.raises(MelecoleError, match=r"segmentation \(3, 4, 6\) and ground truth \(3, 4, 5\)"):
        evaluate_volumes([wrong], gt)
    with pytest.raises(MelecoleError, match=r"\(3, 4, 5\) has dtype float32.*integer"):
        evaluate_volumes([floats], gt)
    assert wrong.regions == floats.regions == gt.regions == []
    with pytest.raises(MelecoleError, match=r"\(3, 4, 5\) has no voxel outside"):
        evaluate_volumes([gt], _LazyVolume(np.zeros((3, 4, 5), np.int32)))
