"""Loader workers feeding training: reproducible, and resumable at checkpoint boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melecole.data.feed import LoaderFeed
from melecole.data.loader import PatchStream
from melecole.errors import MelecoleError
from tests.conftest import blocks_volume

CPU = torch.device("cpu")
OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


def _stream(seed=3):
    raw, labels = blocks_volume(shape=(16, 24, 24))
    return PatchStream([(raw.astype(np.float32) / 255, labels)], (8, 8, 8), seed, offsets=OFFSETS)


def _draw(feed, count):
    return [feed.next_batch(CPU) for _ in range(count)]


def _same(first, second):
    return all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(first, second))


def test_batches_have_the_training_tensors():
    batch = LoaderFeed(_stream(), batch_size=2, workers=1, steps_per_epoch=3).next_batch(CPU)
    assert batch["raw"].shape == (2, 1, 8, 8, 8) and batch["raw"].dtype == torch.float32
    assert batch["instances"].shape == (2, 8, 8, 8) and batch["instances"].dtype == torch.int64
    assert batch["boundary"].shape == (2, 1, 8, 8, 8)
    assert batch["affinities"].shape == batch["affinity_mask"].shape == (2, 3, 8, 8, 8)


def test_same_seed_same_batches_and_epochs_differ():
    first = _draw(LoaderFeed(_stream(), 1, 1, steps_per_epoch=2), 6)
    second = _draw(LoaderFeed(_stream(), 1, 1, steps_per_epoch=2), 6)
    assert _same(first, second)
    assert not torch.equal(first[0]["raw"], first[2]["raw"])  # epoch 1 is not a replay of epoch 0
    other = _draw(LoaderFeed(_stream(seed=4), 1, 1, steps_per_epoch=2), 1)
    assert not torch.equal(first[0]["raw"], other[0]["raw"])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_feed_resumed_at_a_checkpoint_continues_the_same_sequence(accumulate):
    steps_per_epoch = 2
    reference = _draw(LoaderFeed(_stream(), 1, 1, steps_per_epoch, accumulate=accumulate), 6 * accumulate)
    resumed = _draw(LoaderFeed(_stream(), 1, 1, steps_per_epoch, start_step=4, accumulate=accumulate), 2 * accumulate)
    assert _same(reference[4 * accumulate:], resumed)


def test_resume_off_a_checkpoint_boundary_is_refused():
    with pytest.raises(MelecoleError, match="not a multiple of the checkpoint interval 5"):
        LoaderFeed(_stream(), 1, 1, steps_per_epoch=5, start_step=7)
    with pytest.raises(ValueError, match="at least one worker"):
        LoaderFeed(_stream(), 1, 0, steps_per_epoch=5)
