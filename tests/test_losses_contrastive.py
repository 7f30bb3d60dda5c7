"""InfoNCE and the collapse indicator against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from melecole.losses.contrastive import feature_spread, info_nce


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_info_nce_equals_the_hand_computed_value():
    queries = _unit([1.0, 0.0], [0.0, 1.0])
    keys = _unit([1.0, 1.0], [0.0, 1.0])
    queue = _unit([-1.0, 0.0])
    t = 0.5
    s = 1 / math.sqrt(2)
    # Query 0: positive k0 (q.k = s), negatives k1 (0) and the queue (-1).
    loss0 = -math.log(math.exp(s / t) / (math.exp(s / t) + math.exp(0 / t) + math.exp(-1 / t)))
    # Query 1: positive k1 (1), negatives k0 (s) and the queue (0).
    loss1 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t) + math.exp(0 / t)))
    value = info_nce(queries, keys, torch.tensor([1, 2]), queue, t)
    assert value.item() == pytest.approx((loss0 + loss1) / 2, rel=1e-12)


def test_keys_of_the_same_neuron_are_not_negatives_but_other_neurons_are():
    queries = _unit([1.0, 0.0], [0.6, 0.8])
    keys = _unit([0.8, 0.6], [0.0, 1.0])
    queue = _unit([0.0, -1.0])
    t = 0.25
    dot = (queries @ keys.T).tolist()  # [[0.8, 0], [0.96, 0.8]]
    negative = (queries @ queue.T)[:, 0].tolist()  # [0, -0.8]

    def term(positive, negatives):
        return -positive / t + math.log(math.exp(positive / t) + sum(math.exp(n / t) for n in negatives))

    same = (term(dot[0][0], [negative[0]]) + term(dot[1][1], [negative[1]])) / 2
    other = (term(dot[0][0], [dot[0][1], negative[0]]) + term(dot[1][1], [dot[1][0], negative[1]])) / 2
    assert info_nce(queries, keys, torch.tensor([7, 7]), queue, t).item() == pytest.approx(same, rel=1e-12)
    assert info_nce(queries, keys, torch.tensor([7, 8]), queue, t).item() == pytest.approx(other, rel=1e-12)
    assert other > same


def test_aligned_views_give_a_lower_loss_than_shuffled_ones_and_gradients_reach_queries_only():
    generator = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(32, 8, generator=generator), dim=1)
    queue = F.normalize(torch.randn(64, 8, generator=generator), dim=1)
    labels = torch.arange(32)
    queries = keys.clone().requires_grad_(True)
    aligned = info_nce(queries, keys.requires_grad_(True), labels, queue, 0.1)
    shuffled = info_nce(queries, keys[torch.randperm(32, generator=generator)], labels, queue, 0.1)
    assert aligned < 0.5 < 2.0 < shuffled
    aligned.backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0
    assert keys.grad is None


def test_invalid_pairs_are_ignored_and_no_valid_pair_gives_zero():
    queries = _unit([1.0, 0.0], [0.0, 1.0]).requires_grad_(True)
    keys = _unit([1.0, 0.0], [1.0, 0.0])
    labels = torch.tensor([1, 2])
    first = info_nce(queries, keys, labels, None, 0.5, torch.tensor([True, False]))
    assert first.item() == pytest.approx(0.0, abs=1e-12)  # a single pair has no negative left
    none = info_nce(queries, keys, labels, None, 0.5, torch.tensor([False, False]))
    assert none.item() == 0.0
    none.backward()
    assert torch.equal(queries.grad, torch.zeros_like(queries))


def _own_neuron_case():
    # A query of neuron 5 in volume 0 and a queue of three keys; key 0 is the query's own voxel,
    # queued earlier: the strongest false negative there is.
    generator = torch.Generator().manual_seed(3)
    queries = F.normalize(torch.randn(1, 4, generator=generator, dtype=torch.float64), dim=1)
    keys = F.normalize(torch.randn(1, 4, generator=generator, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=1)
    queue[0] = queries[0]
    return queries, keys, torch.tensor([1]), queue, torch.tensor([[0, 5]])


QUEUE_IDENTITIES = torch.tensor([[0, 5], [1, 1], [2, 9]])


def test_a_queued_key_of_the_querys_own_neuron_is_no_negative():
    queries, keys, labels, queue, identities = _own_neuron_case()
    present = info_nce(queries, keys, labels, queue, 0.2, None, identities, QUEUE_IDENTITIES)
    absent = info_nce(queries, keys, labels, queue[1:], 0.2, None, identities, QUEUE_IDENTITIES[1:])
    assert present.item() == pytest.approx(absent.item(), rel=1e-12)
    # Without identities the same key is a negative (exp(1 / 0.2) in the denominator).
    assert info_nce(queries, keys, labels, queue, 0.2).item() > absent.item() + 1.0


def test_a_queued_key_with_the_querys_label_from_another_volume_stays_a_negative():
    queries, keys, labels, queue, _ = _own_neuron_case()
    plain = info_nce(queries, keys, labels, queue, 0.2).item()
    other_volume = info_nce(queries, keys, labels, queue, 0.2, None, torch.tensor([[1, 5]]), QUEUE_IDENTITIES)
    assert other_volume.item() == pytest.approx(plain, rel=1e-12)
    other_label = info_nce(queries, keys, labels, queue, 0.2, None, torch.tensor([[0, 7]]), QUEUE_IDENTITIES)
    assert other_label.item() == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("identity", [[0, 0], [-1, 5]], ids=["unlabelled", "unknown volume"])
def test_unlabelled_or_unknown_identities_exclude_nothing(identity):
    queries, keys, labels, queue, _ = _own_neuron_case()
    matching = torch.tensor([identity, [1, 1], [2, 9]])
    assert info_nce(queries, keys, labels, queue, 0.2, None, torch.tensor([identity]), matching).item() == \
        pytest.approx(info_nce(queries, keys, labels, queue, 0.2).item(), rel=1e-12)


def test_the_same_neuron_queued_key_contributes_no_gradient():
    queries, keys, labels, queue, identities = _own_neuron_case()

    def gradient(queue, queue_identities, identities=identities):
        leaf = queries.clone().requires_grad_(True)
        info_nce(leaf, keys, labels, queue, 0.2, None, identities, queue_identities).backward()
        return leaf.grad

    absent = gradient(queue[1:], QUEUE_IDENTITIES[1:])
    torch.testing.assert_close(gradient(queue, QUEUE_IDENTITIES), absent, rtol=0, atol=1e-15)
    moved = queue.clone()
    moved[0] = -keys[0]  # wherever the excluded key points, nothing changes
    torch.testing.assert_close(gradient(moved, QUEUE_IDENTITIES), absent, rtol=0, atol=1e-15)
    assert (gradient(queue, QUEUE_IDENTITIES, None) - absent).abs().max() > 1e-2  # a negative when not excluded


def test_batch_keys_of_one_neuron_in_two_samples_are_no_negatives():
    queries = _unit([1.0, 0.0], [0.6, 0.8])
    keys = _unit([0.8, 0.6], [0.0, 1.0])
    labels = torch.tensor([7, 8])  # two samples: per-sample ids differ
    same = info_nce(queries, keys, labels, None, 0.25, None, torch.tensor([[3, 40], [3, 40]]))
    assert same.item() == pytest.approx(info_nce(queries, keys, torch.tensor([7, 7]), None, 0.25).item(), rel=1e-12)
    other = info_nce(queries, keys, labels, None, 0.25, None, torch.tensor([[3, 40], [4, 40]]))
    assert other.item() == pytest.approx(info_nce(queries, keys, labels, None, 0.25).item(), rel=1e-12)
    assert other > same


def test_identities_of_invalid_pairs_are_dropped_with_them():
    queries, keys, labels, queue, identities = _own_neuron_case()
    # A padding pair of another identity after the real one: dropped, it must not shift identities.
    queries, keys = torch.cat([queries, -queries]), torch.cat([keys, -keys])
    labels, identities = torch.tensor([1, 2]), torch.tensor([[0, 5], [2, 9]])
    scored = info_nce(queries, keys, labels, queue, 0.2, torch.tensor([True, False]), identities, QUEUE_IDENTITIES)
    alone = info_nce(queries[:1], keys[:1], labels[:1], queue[1:], 0.2, None, identities[:1], QUEUE_IDENTITIES[1:])
    assert scored.item() == pytest.approx(alone.item(), rel=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(identities=torch.zeros(3, 2, dtype=torch.long)), "identities"),
    (dict(queue=torch.zeros(4, 3), queue_identities=torch.zeros(3, 2, dtype=torch.long)), "queue_identities"),
    (dict(queue_identities=torch.zeros(0, 2, dtype=torch.long)), "queue_identities"),
])
def test_info_nce_rejects_identities_of_the_wrong_shape(kwargs, message):
    arguments = dict(queries=torch.zeros(2, 3), keys=torch.zeros(2, 3), labels=torch.zeros(2), queue=None,
                     temperature=0.1)
    with pytest.raises(ValueError, match=message):
        info_nce(**{**arguments, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    (dict(queries=torch.zeros(2, 3), keys=torch.zeros(2, 4), labels=torch.zeros(2), queue=None, temperature=0.1), "keys"),
    (dict(queries=torch.zeros(2, 3), keys=torch.zeros(2, 3), labels=torch.zeros(3), queue=None, temperature=0.1), "labels"),
    (dict(queries=torch.zeros(2, 3), keys=torch.zeros(2, 3), labels=torch.zeros(2), queue=torch.zeros(4, 2),
          temperature=0.1), "queue"),
    (dict(queries=torch.zeros(2, 3), keys=torch.zeros(2, 3), labels=torch.zeros(2), queue=None, temperature=0.0),
     "temperature"),
])
def test_info_nce_rejects_bad_shapes_with_the_shapes_in_the_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        info_nce(**kwargs)


def test_feature_spread_is_zero_for_identical_features_and_near_one_when_spread():
    same = torch.tensor([[0.3, -1.2, 2.0]]).repeat(50, 1)
    assert feature_spread(same).item() == pytest.approx(0.0, abs=1e-6)
    dim = 4
    basis = torch.eye(dim).repeat(10, 1)  # one-hot rows: per-dimension std sqrt(1/D * (1 - 1/D))
    assert feature_spread(basis).item() == pytest.approx(math.sqrt(1 - 1 / dim), rel=1e-6)
    spread = feature_spread(torch.randn(20000, 16, generator=torch.Generator().manual_seed(0))).item()
    assert 0.95 < spread < 1.05
    with pytest.raises(ValueError, match="N >= 2"):
        feature_spread(torch.zeros(1, 3))
