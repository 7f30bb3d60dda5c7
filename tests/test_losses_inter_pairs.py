"""train.loss.inter_pairs: the push term over all pairs of a patch's pieces, or only over pieces of
different labels (issue 13, finding 3), from the pure loss through the batch to the train stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from melecole.config import LossConfig, load_params, params_from_dict
from melecole.data.loader import patch_targets
from melecole.data.sampling import PatchSampler
from melecole.losses import EmbeddingLoss, MultitaskLoss, discriminative_loss
from melecole.training import make_batch

ROOT = Path(__file__).resolve().parents[1]


def _row(values, instances, groups):
    """One batch element, a row of voxels (Z = Y = 1) with a 1-d embedding."""
    embedding = torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, 1, -1)
    return (embedding, torch.tensor(instances).reshape(1, 1, 1, -1), torch.tensor(groups).reshape(1, 1, 1, -1))


# Pieces 1 and 2 are one neuron (label 7) cut in two by the patch; piece 3 is neuron 9.
# Means 0, 1, 2; push margin 2 * delta_d = 3 (1-d: L1 = L2):
#   pair (1, 2): (3 - 1)^2 = 4, pair (1, 3): (3 - 2)^2 = 1, pair (2, 3): (3 - 1)^2 = 4.
#   all pairs:    2 * (4 + 1 + 4) / 6 = 3;   other labels: 2 * (1 + 4) / 6 = 5 / 3.
VALUES, INSTANCES, GROUPS = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0], [1, 1, 2, 2, 3, 3], [7, 7, 7, 7, 9, 9]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_pieces_of_one_label_drop_out_of_the_push_term_hand_computed(norm):
    embedding, instances, groups = _row(VALUES, INSTANCES, GROUPS)
    every = discriminative_loss(embedding, instances, 0.5, 1.5, norm=norm)
    others = discriminative_loss(embedding, instances, 0.5, 1.5, norm=norm, groups=groups)
    assert every["inter"].item() == pytest.approx(3.0, rel=1e-12)
    assert others["inter"].item() == pytest.approx(5.0 / 3.0, rel=1e-12)
    for key in ("intra", "reg"):  # pieces are still pulled to their own means
        assert others[key].item() == pytest.approx(every[key].item(), rel=1e-12), key


def test_groups_that_separate_every_instance_change_nothing_and_ids_are_arbitrary():
    torch.manual_seed(0)
    embedding = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
    instances = torch.randint(0, 5, (2, 2, 3, 4))
    every = discriminative_loss(embedding, instances)
    own = discriminative_loss(embedding, instances, groups=instances * 11 + 3)
    for key in every:
        assert own[key].item() == pytest.approx(every[key].item(), rel=1e-12), key


def test_only_other_labels_no_push_between_pieces_of_one_neuron_and_the_gradient_vanishes():
    # Pieces 1 and 2 of neuron 7 sit 0.5 apart, neuron 9 far away: without groups the push term
    # drives the two pieces apart; with groups nothing does (each piece is already uniform).
    embedding, instances, groups = _row([0.0, 0.0, 0.5, 0.5, 10.0, 10.0], INSTANCES, GROUPS)
    embedding.requires_grad_(True)
    every = discriminative_loss(embedding, instances, 0.5, 1.5, gamma=0.0)
    (grad_every,) = torch.autograd.grad(every["loss"], embedding)
    assert every["inter"].item() == pytest.approx(2 * 2.5**2 / 6, rel=1e-12)
    assert grad_every[..., 0].item() > 0 > grad_every[..., 2].item()  # gradient descent pulls them apart
    others = discriminative_loss(embedding, instances, 0.5, 1.5, gamma=0.0, groups=groups)
    (grad_others,) = torch.autograd.grad(others["loss"], embedding)
    assert others["loss"].item() == 0.0
    assert torch.count_nonzero(grad_others) == 0


def test_groups_apply_per_batch_element():
    first = _row(VALUES, INSTANCES, GROUPS)
    second = _row(VALUES, INSTANCES, [1, 1, 2, 2, 3, 3])  # here the three pieces are three neurons
    embedding, instances, groups = (torch.cat(parts) for parts in zip(first, second))
    out = discriminative_loss(embedding, instances, 0.5, 1.5, groups=groups)
    assert out["inter"].item() == pytest.approx((5.0 / 3.0 + 3.0) / 2, rel=1e-12)


def test_bad_groups_are_rejected():
    embedding, instances, groups = _row(VALUES, INSTANCES, GROUPS)
    with pytest.raises(ValueError, match="span several groups"):
        discriminative_loss(embedding, instances, groups=torch.tensor([7, 8, 7, 7, 9, 9]).reshape(1, 1, 1, -1))
    with pytest.raises(ValueError, match=r"groups \(1, 1, 1, 5\) and instances \(1, 1, 1, 6\)"):
        discriminative_loss(embedding, instances, groups=groups[..., :5])
    with pytest.raises(ValueError, match="integer ids"):
        discriminative_loss(embedding, instances, groups=groups.double())


def test_embedding_loss_module_uses_the_labels_only_when_asked():
    embedding, instances, groups = _row(VALUES, INSTANCES, GROUPS)
    outputs = {"embedding": embedding}
    boundary = torch.zeros(1, 1, 1, 1, 6)
    default = EmbeddingLoss(boundary_weight=0.0)
    assert default(outputs, instances, boundary)["inter"].item() == pytest.approx(3.0, rel=1e-12)
    assert default(outputs, instances, boundary, groups)["inter"].item() == pytest.approx(3.0, rel=1e-12)
    others = EmbeddingLoss(boundary_weight=0.0, inter_pairs="other_labels")
    assert others(outputs, instances, boundary, groups)["inter"].item() == pytest.approx(5.0 / 3.0, rel=1e-12)
    assert "inter_pairs='other_labels'" in repr(others)
    with pytest.raises(ValueError, match="needs the patch's labels"):
        others(outputs, instances, boundary)
    with pytest.raises(ValueError, match="inter_pairs must be one of"):
        EmbeddingLoss(inter_pairs="labels")
    # The multitask loss hands the batch's labels on.
    batch = {"instances": instances, "boundary": boundary, "labels": groups}
    terms = MultitaskLoss(others)(outputs, batch)
    assert terms["inter"].item() == pytest.approx(5.0 / 3.0, rel=1e-12)


def test_batches_carry_the_labels_the_pieces_were_cut_from():
    # One neuron (5) whose two arms meet only outside the patch, beside neuron 7.
    labels = np.full((4, 4, 9), 7, dtype=np.uint64)
    labels[:, :, :3] = 5
    labels[:, :, 6:] = 5
    raw = np.zeros(labels.shape, np.float32)
    sample = patch_targets(raw, labels)
    assert sample["labels"].dtype == torch.int64
    np.testing.assert_array_equal(sample["labels"].numpy(), labels.astype(np.int64))
    sampler = PatchSampler([(raw, labels)], labels.shape, np.random.default_rng(0), min_labelled=0.0,
                           permute="none", flip=False)
    batch = make_batch(sampler, 1, torch.device("cpu"))
    assert batch.keys() == sample.keys()
    torch.testing.assert_close(batch["labels"][0], sample["labels"])
    # With the batch's labels the arms are not pushed apart; without, they are.
    embedding = torch.zeros(1, 2, *labels.shape, dtype=torch.float64)
    embedding[:, 0][batch["labels"] == 7] = 5.0
    outputs = {"embedding": embedding}
    every = MultitaskLoss(EmbeddingLoss(boundary_weight=0.0))(outputs, batch)
    others = MultitaskLoss(EmbeddingLoss(boundary_weight=0.0, inter_pairs="other_labels"))(outputs, batch)
    assert every["inter"].item() > 0
    assert others["inter"].item() == 0.0


def test_config_default_keeps_every_pair_and_the_option_is_validated():
    assert LossConfig().inter_pairs == "all"
    assert load_params(ROOT / "params.yaml").train.loss.inter_pairs == "all"
    assert LossConfig(inter_pairs="other_labels").inter_pairs == "other_labels"
    with pytest.raises(ValueError):
        LossConfig(inter_pairs="pieces")


class _Built(Exception):
    pass


@pytest.mark.parametrize("choice", ["all", "other_labels"])
def test_the_train_stage_hands_its_choice_to_the_embedding_loss(tmp_path, monkeypatch, choice):
    from melecole.io import write_volumes
    from melecole.stages import train as train_stage
    from tests.conftest import blocks_volume, tiny_params_dict

    for split, seed in (("train", 0), ("val", 1)):
        write_volumes(tmp_path / f"{split}.h5", dict(zip(("raw", "labels"), blocks_volume(seed=seed))))
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        raise _Built  # stop before any training step

    monkeypatch.setattr(train_stage, "EmbeddingLoss", spy)
    params = params_from_dict(tiny_params_dict(**{"train.loss.inter_pairs": choice}))
    with pytest.raises(_Built):
        train_stage.train(params, [tmp_path / "train.h5"], [tmp_path / "val.h5"], tmp_path / "model.pt")
    assert seen["inter_pairs"] == choice
