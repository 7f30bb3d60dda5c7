"""Voxel pairs of two views point at the same tissue voxel; contrastive batches carry them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melecole.data.augment import build_augmenter, read_shape
from melecole.data.augment.params import AugmentConfig
from melecole.data.pairs import ViewSampler, sample_pairs
from melecole.data.views import two_views
from melecole.training import make_batch
from tests.conftest import blocks_volume


def _region(seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(20, 22, 24)).astype(np.float32)  # every voxel different: a unique fingerprint
    labels = rng.integers(0, 4, size=raw.shape).astype(np.uint64)
    return raw, labels


def test_pairs_point_at_the_same_voxel_in_both_views_and_are_labelled():
    raw, labels = _region()
    rng = np.random.default_rng(3)
    for _ in range(5):
        pair = two_views(raw, labels, rng, (16, 16, 16), (4, 6, 8))
        pairs = sample_pairs(pair, 50, rng)
        assert pairs.index_a.shape == pairs.index_b.shape == pairs.labels.shape == (50,) and pairs.valid.all()
        np.testing.assert_array_equal(pair.raw[0].reshape(-1)[pairs.index_a], pair.raw[1].reshape(-1)[pairs.index_b])
        np.testing.assert_array_equal(pair.labels[0].reshape(-1)[pairs.index_a], pairs.labels)
        np.testing.assert_array_equal(pair.labels[1].reshape(-1)[pairs.index_b], pairs.labels)
        assert (pairs.labels != 0).all()


def test_an_unlabelled_overlap_gives_padding_marked_invalid():
    raw, _ = _region()
    pair = two_views(raw, np.zeros(raw.shape, np.uint64), np.random.default_rng(0), (16, 16, 16), (2, 2, 2))
    pairs = sample_pairs(pair, 7, np.random.default_rng(0))
    assert pairs.index_a.shape == (7,) and not pairs.valid.any()
    with pytest.raises(ValueError, match="count"):
        sample_pairs(pair, 0, np.random.default_rng(0))


def test_view_sampler_shares_the_geometric_augmentation_and_batches_carry_unique_neuron_ids():
    raw, labels = blocks_volume(shape=(40, 40, 40))
    volumes = [((raw.astype(np.float32) - 128) / 64, labels)]
    config = AugmentConfig()
    augmenter = build_augmenter(config, (16, 16, 16))
    sampler = ViewSampler(volumes, (16, 16, 16), (4, 4, 4), 32, np.random.default_rng(0), geometry=augmenter.geometry,
                          read=read_shape(config, (20, 20, 20)), intensity=augmenter.intensity, min_labelled=0.5)
    for _ in range(3):
        pair, pairs = sampler.sample()
        assert pair.raw[0].shape == pair.raw[1].shape == (16, 16, 16)
        # Intensity differs per view, labels (geometry shared) match at every pair.
        np.testing.assert_array_equal(pair.labels[0].reshape(-1)[pairs.index_a], pair.labels[1].reshape(-1)[pairs.index_b])
    batch = make_batch(sampler, 2, torch.device("cpu"), offsets=[(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
    assert batch["raw"].shape == batch["view"].shape == (2, 1, 16, 16, 16)
    assert batch["index"].shape == batch["view_index"].shape == batch["pair_labels"].shape == (2, 32)
    assert batch["affinities"].shape == (2, 3, 16, 16, 16) and batch["valid"].all()
    # The same raw label id in two samples is two neurons: no id is shared between the samples.
    assert not set(batch["pair_labels"][0].tolist()) & set(batch["pair_labels"][1].tolist())
    # Within a sample, voxels of one connected piece of a neuron always share their id.
    instances = batch["instances"][0].reshape(-1)[batch["index"][0]]
    same_id = batch["pair_labels"][0][:, None] == batch["pair_labels"][0][None, :]
    same_piece = instances[:, None] == instances[None, :]
    assert same_piece.sum() > 32 and not (same_piece & ~same_id).any()


def test_a_view_region_larger_than_every_volume_is_refused_by_name():
    from melecole.errors import MelecoleError

    raw, labels = blocks_volume(shape=(16, 24, 24))
    with pytest.raises(MelecoleError, match=r"region \(20, 20, 20\).*max_offset"):
        ViewSampler([(raw.astype(np.float32), labels)], (16, 16, 16), (4, 4, 4), 8, np.random.default_rng(0))
