"""train.loss.embedding_affinity_weight: a BCE on the embedding's own distance affinities (issue 13,
finding 3), and train.loss.delta_v = 0 (Lee et al.'s pull onto the mean), from the pure loss
through MultitaskLoss to the train stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import melecole.stages.train as train_stage
from melecole.config import LossConfig, params_from_dict
from melecole.io import write_volumes
from melecole.losses import EmbeddingLoss, MultitaskLoss
from melecole.losses.embedding_affinity import distance_affinities, embedding_affinity_bce
from melecole.segment.affinities import embedding_affinities
from tests.conftest import blocks_volume, tiny_params_dict

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 2, -3), (-4, 0, 4), (0, 0, 9)]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_matches_the_inference_affinities_of_segment(norm):
    torch.manual_seed(0)
    embedding = torch.randn(2, 5, 6, 7, 8, dtype=torch.float64) * 0.5
    ours = distance_affinities(embedding, OFFSETS, delta_d=1.5, norm=norm)
    assert ours.shape == (2, len(OFFSETS), 6, 7, 8)
    for b in range(2):
        reference = embedding_affinities(embedding[b].float(), OFFSETS, delta_d=1.5, norm=norm)
        np.testing.assert_allclose(ours[b].numpy(), reference, atol=1e-5)
    # the long x offset leaves the patch everywhere: all zeros, as in segment
    assert not ours[:, -1].any()
    assert 0.05 < float(ours[:, :3].mean()) < 0.95  # the random embedding is neither collapsed nor far


def _row_loss(values, labels, weight_fn=None):
    """1-d embedding along x, one nearest-neighbour offset; returns (loss, affinities)."""
    embedding = torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, 1, -1).requires_grad_(True)
    labels = np.asarray(labels).reshape(1, 1, -1)
    same = (labels[..., 1:] == labels[..., :-1]).astype(np.float64)
    target = np.zeros((1, 1) + labels.shape)
    mask = np.zeros_like(target)
    target[0, 0, ..., 1:] = same  # offset (0, 0, -1): voxel x against x - 1
    mask[0, 0, ..., 1:] = 1
    loss = embedding_affinity_bce(embedding, torch.from_numpy(target), torch.from_numpy(mask), [(0, 0, -1)], 1.5)
    return embedding, loss


def test_bce_is_the_class_balanced_mean_hand_computed():
    # Voxels at 0, 1, 4 (margin 3): pair (1, 0) at distance 1 -> a = (2/3)^2, same object;
    # pair (2, 1) at distance 3 -> a = 0, clamped to 1e-6, different objects.
    _, loss = _row_loss([0.0, 1.0, 4.0], [1, 1, 2])
    positive = -math.log((2 / 3) ** 2)
    negative = -math.log(1 - 1e-6)
    assert loss.item() == pytest.approx((positive + negative) / 2, rel=1e-9)


def test_the_gradient_pulls_one_object_together_and_pushes_two_apart():
    embedding, loss = _row_loss([0.0, 0.8, 1.6], [1, 1, 2])
    loss.backward()
    grad = embedding.grad.reshape(-1)
    # Voxel 1 belongs with voxel 0 and not with voxel 2: descent moves it towards 0, and voxel 2
    # (another object, inside the margin) away from voxel 1.
    assert grad[1] > 0  # descent decreases x1 -> closer to x0 = 0
    assert grad[2] < 0  # descent increases x2 -> further from x1
    assert grad[0] < 0  # descent increases x0 -> closer to x1


def test_the_embedding_affinity_term_adds_weighted_and_needs_targets_and_offsets():
    torch.manual_seed(1)
    labels = torch.from_numpy(blocks_volume((8, 8, 8), block=4)[1].astype(np.int64))[None]
    from melecole.data.targets import affinities

    target, mask = affinities(labels[0].numpy(), OFFSETS[:3])
    batch = {"instances": labels, "boundary": torch.zeros((1, 1, 8, 8, 8)),
             "affinities": torch.from_numpy(target)[None], "affinity_mask": torch.from_numpy(mask)[None]}
    outputs = {"embedding": torch.randn(1, 4, 8, 8, 8, dtype=torch.float64)}
    embedding_loss = EmbeddingLoss(boundary_weight=0.0)
    plain = MultitaskLoss(embedding_loss)(outputs, batch)
    assert "embedding_affinity" not in plain
    with_term = MultitaskLoss(embedding_loss, embedding_affinity_weight=0.5, offsets=OFFSETS[:3])(outputs, batch)
    expected = embedding_affinity_bce(outputs["embedding"], batch["affinities"], batch["affinity_mask"], OFFSETS[:3], 1.5)
    assert with_term["embedding_affinity"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert with_term["loss"].item() == pytest.approx(plain["loss"].item() + 0.5 * expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="offsets"):
        MultitaskLoss(embedding_loss, embedding_affinity_weight=1.0)
    without = {key: value for key, value in batch.items() if not key.startswith("affinit")}
    with pytest.raises(ValueError, match="no affinity targets"):
        MultitaskLoss(embedding_loss, embedding_affinity_weight=1.0, offsets=OFFSETS[:3])(outputs, without)


def test_config_allows_lee_pull_onto_the_mean_and_rejects_negative_weights():
    assert LossConfig().embedding_affinity_weight == 0.0
    assert LossConfig(delta_v=0.0).delta_v == 0.0
    with pytest.raises(ValueError):
        LossConfig(delta_v=-0.1)
    with pytest.raises(ValueError):
        LossConfig(embedding_affinity_weight=-1.0)


def test_delta_v_zero_pulls_every_voxel_onto_its_mean_with_finite_gradients():
    from melecole.losses import discriminative_loss

    # One voxel exactly on its mean (a singleton piece) must not give NaN gradients.
    embedding = torch.tensor([0.0, 0.4, 5.0], dtype=torch.float64).reshape(1, 1, 1, 1, 3).requires_grad_(True)
    instances = torch.tensor([1, 1, 2]).reshape(1, 1, 1, 3)
    out = discriminative_loss(embedding, instances, delta_v=0.0, delta_d=1.5, gamma=0.0)
    # pieces: {0, 0.4} mean 0.2, each 0.2 away -> 0.04; {5} on its mean -> 0; intra = mean(0.04, 0)
    assert out["intra"].item() == pytest.approx(0.02, rel=1e-9)
    out["loss"].backward()
    assert torch.isfinite(embedding.grad).all()
    assert discriminative_loss(embedding, instances, delta_v=0.5, delta_d=1.5)["intra"].item() == 0.0


def test_the_train_stage_trains_the_term_without_an_affinity_head(tmp_path, monkeypatch):
    for split, seed in (("train", 0), ("val", 1)):
        write_volumes(tmp_path / f"{split}.h5", dict(zip(("raw", "labels"), blocks_volume(seed=seed))))
    seen = []

    class Recording(MultitaskLoss):
        def forward(self, outputs, batch):
            terms = super().forward(outputs, batch)
            seen.append({key: float(value.detach()) for key, value in terms.items()})
            return terms

    monkeypatch.setattr(train_stage, "MultitaskLoss", Recording)
    params = params_from_dict(tiny_params_dict(**{
        "model.affinity_head": False, "train.loss.embedding_affinity_weight": 1.0, "train.loss.delta_v": 0.0,
        "train.steps": 2, "train.val_every": 2}))
    out = tmp_path / "model" / "model.pt"
    train_stage.train(params, [tmp_path / "train.h5"], [tmp_path / "val.h5"], out)
    assert len(seen) == 2
    assert all("affinity" not in terms and math.isfinite(terms["embedding_affinity"]) and terms["embedding_affinity"] > 0
               for terms in seen), seen
    assert out.exists()
