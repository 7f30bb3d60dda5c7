"""Discriminative embedding loss, class-balanced boundary BCE and the EmbeddingLoss module."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from melecole.losses import EmbeddingLoss, boundary_bce, discriminative_loss

SQRT2 = math.sqrt(2.0)
SQRT5 = math.sqrt(5.0)


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """Five voxels in a row (Z=Y=1), embedding dim 2, two instances and one ignored voxel.

    instance 1: (0, 0), (2, 0)  -> mean (1, 0)
    instance 2: (1, 0), (3, 2)  -> mean (2, 1)
    voxel 2 has label 0 and a wild embedding that must not matter.
    """
    columns = [(0.0, 0.0), (1.0, 0.0), (9.0, -7.0), (2.0, 0.0), (3.0, 2.0)]
    embedding = torch.tensor(columns, dtype=torch.float64).T.reshape(1, 2, 1, 1, 5)
    instances = torch.tensor([1, 2, 0, 1, 2]).reshape(1, 1, 1, 5)
    return embedding, instances


# Hand-computed with delta_v = 0.5, delta_d = 1.5:
#   intra: instance 1 distances to its mean are 1, 1 (L1 and L2): hinge (1 - 0.5)^2 = 0.25.
#          instance 2 offsets are (-1, -1), (1, 1): L2 = sqrt 2 -> (sqrt 2 - 0.5)^2 = 2.25 - sqrt 2;
#          L1 = 2 -> 1.5^2 = 2.25.  intra = mean over the two instances.
#   inter: means differ by (1, 1): L2 sqrt 2 -> (3 - sqrt 2)^2 = 11 - 6 sqrt 2; L1 2 -> 1^2 = 1.
#   reg:   |(1, 0)| = 1, |(2, 1)| = sqrt 5 (L2) or 3 (L1).
EXPECTED = {
    "l2": {"intra": (0.25 + 2.25 - SQRT2) / 2, "inter": 11 - 6 * SQRT2, "reg": (1 + SQRT5) / 2},
    "l1": {"intra": (0.25 + 2.25) / 2, "inter": 1.0, "reg": (1 + 3) / 2},
}


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("alpha,beta,gamma", [(1.0, 1.0, 0.001), (2.0, 3.0, 0.5)])
def test_hand_computed_terms(norm, alpha, beta, gamma):
    embedding, instances = _tiny()
    out = discriminative_loss(embedding, instances, 0.5, 1.5, alpha, beta, gamma, norm)
    want = EXPECTED[norm]
    for key in ("intra", "inter", "reg"):
        assert out[key].item() == pytest.approx(want[key], rel=1e-9), key
    total = alpha * want["intra"] + beta * want["inter"] + gamma * want["reg"]
    assert out["loss"].item() == pytest.approx(total, rel=1e-9)


def test_batch_averages_only_elements_with_instances_and_ids_are_arbitrary():
    embedding, instances = _tiny()
    single = discriminative_loss(embedding, instances)
    relabelled = torch.where(instances == 1, 70, torch.where(instances == 2, 5, 0))
    batch_embedding = torch.cat([embedding, torch.randn_like(embedding, dtype=torch.float64)])
    batch_instances = torch.cat([relabelled, torch.zeros_like(instances)])
    batched = discriminative_loss(batch_embedding, batch_instances)
    for key in single:
        assert batched[key].item() == pytest.approx(single[key].item(), rel=1e-9)


def test_batch_mean_of_two_elements():
    torch.manual_seed(0)
    embedding = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    instances = torch.randint(0, 4, (2, 2, 4, 4))
    both = discriminative_loss(embedding, instances)
    parts = [discriminative_loss(embedding[i : i + 1], instances[i : i + 1]) for i in range(2)]
    for key in both:
        assert both[key].item() == pytest.approx((parts[0][key] + parts[1][key]).item() / 2, rel=1e-9)


def _reference(embedding, instances, delta_v, delta_d, norm):
    """A per-instance loop over one batch element, written independently of the library."""
    dims = embedding.shape[1]
    vectors = embedding[0].reshape(dims, -1).T
    labels = instances[0].reshape(-1)
    ids = [int(i) for i in torch.unique(labels) if i > 0]

    def dist(v):
        return v.abs().sum(-1) if norm == "l1" else torch.sqrt((v**2).sum(-1))

    means = [vectors[labels == i].mean(0) for i in ids]
    intra = sum(((dist(vectors[labels == i] - m) - delta_v).clamp(min=0) ** 2).mean() for i, m in zip(ids, means))
    pairs = [(a, b) for a in range(len(ids)) for b in range(len(ids)) if a != b]
    inter = sum((2 * delta_d - dist(means[a] - means[b])).clamp(min=0) ** 2 for a, b in pairs) / len(pairs)
    reg = sum(dist(m) for m in means) / len(ids)
    return intra / len(ids), inter, reg


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_matches_a_naive_per_instance_loop(norm):
    rng = np.random.default_rng(3)
    embedding = torch.from_numpy(rng.normal(size=(1, 4, 3, 6, 6)))
    instances = torch.from_numpy(rng.integers(0, 9, size=(1, 3, 6, 6)))
    out = discriminative_loss(embedding, instances, delta_v=0.3, delta_d=1.0, norm=norm)
    intra, inter, reg = _reference(embedding, instances, 0.3, 1.0, norm)
    assert out["intra"].item() == pytest.approx(intra.item(), rel=1e-9)
    assert out["inter"].item() == pytest.approx(inter.item(), rel=1e-9)
    assert out["reg"].item() == pytest.approx(reg.item(), rel=1e-9)


def _perfect(dims: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Four instances, each a constant vector 4 * e_k: pairwise distance 4 sqrt 2 > 2 * delta_d."""
    rng = np.random.default_rng(0)
    instances = torch.from_numpy(rng.integers(0, dims + 1, size=(1, 4, 8, 8)))
    embedding = torch.zeros(1, dims, 4, 8, 8)
    for k in range(1, dims + 1):
        embedding[0, k - 1][instances[0] == k] = 4.0
    return embedding, instances


def test_perfect_embeddings_leave_only_the_regulariser():
    embedding, instances = _perfect()
    out = discriminative_loss(embedding, instances, delta_v=0.5, delta_d=1.5, gamma=0.001)
    assert out["intra"].item() == 0.0
    assert out["inter"].item() == 0.0
    assert out["reg"].item() == pytest.approx(4.0, rel=1e-6)  # every mean has norm 4
    assert out["loss"].item() == pytest.approx(0.001 * 4.0, rel=1e-6)


def test_random_and_shuffled_embeddings_cost_much_more():
    embedding, instances = _perfect()
    perfect = discriminative_loss(embedding, instances)["loss"].item()
    generator = torch.Generator().manual_seed(1)
    random = discriminative_loss(torch.randn(embedding.shape, generator=generator), instances)["loss"].item()
    order = torch.randperm(embedding[0, 0].numel(), generator=generator)
    shuffled = embedding.reshape(1, 4, -1)[:, :, order].reshape(embedding.shape)
    shuffled_loss = discriminative_loss(shuffled, instances)["loss"].item()
    assert random > 100 * perfect
    assert shuffled_loss > 100 * perfect


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_gradients_finite_nonzero_and_zero_on_ignored_voxels(norm):
    generator = torch.Generator().manual_seed(2)
    embedding = torch.randn(2, 3, 2, 5, 5, generator=generator, requires_grad=True)
    instances = torch.randint(0, 4, (2, 2, 5, 5), generator=generator)
    discriminative_loss(embedding, instances, norm=norm)["loss"].backward()
    grad = embedding.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    ignored = (instances == 0).unsqueeze(1).expand_as(grad)
    assert ignored.any()
    assert (grad[ignored] == 0).all()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_gradients_finite_when_two_instances_share_a_mean(norm):
    instances = torch.tensor([1, 1, 2, 2]).reshape(1, 1, 1, 4)
    embedding = torch.tensor([0.3, -0.2]).reshape(1, 2, 1, 1, 1).repeat(1, 1, 1, 1, 4).requires_grad_()
    out = discriminative_loss(embedding, instances, norm=norm)
    assert out["inter"].item() == pytest.approx(3.0**2)  # distance 0 -> (2 * delta_d)^2
    out["loss"].backward()
    assert torch.isfinite(embedding.grad).all()
    assert embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_all_zero_embedding_has_finite_gradients(norm):
    embedding = torch.zeros(1, 3, 2, 3, 3, requires_grad=True)
    instances = torch.tensor([1, 2, 3]).repeat_interleave(6).reshape(1, 2, 3, 3)
    discriminative_loss(embedding, instances, norm=norm)["loss"].backward()
    assert torch.isfinite(embedding.grad).all()


def test_label_zero_voxels_are_ignored():
    embedding, instances = _tiny()
    changed = embedding.clone()
    changed[..., 2] = torch.tensor([-100.0, 55.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    before = discriminative_loss(embedding, instances)
    after = discriminative_loss(changed, instances)
    for key in before:
        assert after[key].item() == before[key].item()


def test_zero_instances_give_zero_with_a_gradient_path():
    embedding = torch.randn(2, 3, 2, 4, 4, requires_grad=True)
    out = discriminative_loss(embedding, torch.zeros(2, 2, 4, 4, dtype=torch.int64))
    for key in ("loss", "intra", "inter", "reg"):
        assert out[key].item() == 0.0
    out["loss"].backward()
    assert embedding.grad is not None
    assert (embedding.grad == 0).all()


def test_one_instance_has_no_inter_term():
    generator = torch.Generator().manual_seed(4)
    embedding = torch.randn(1, 3, 2, 4, 4, generator=generator, requires_grad=True)
    instances = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    instances[:, :, :2] = 9
    out = discriminative_loss(embedding, instances)
    assert out["inter"].item() == 0.0
    assert out["intra"].item() > 0
    out["loss"].backward()
    assert torch.isfinite(embedding.grad).all()


def test_half_precision_input_computes_in_float32():
    embedding, instances = _tiny()
    out = discriminative_loss(embedding.to(torch.bfloat16), instances)
    assert out["loss"].dtype == torch.float32
    assert out["intra"].item() == pytest.approx(EXPECTED["l2"]["intra"], rel=1e-2)


def test_bad_inputs_are_rejected_with_shapes():
    embedding = torch.zeros(1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=re.escape("(1, 3, 4, 6)")):
        discriminative_loss(embedding, torch.zeros(1, 3, 4, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        discriminative_loss(embedding, torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="l3"):
        discriminative_loss(embedding, torch.zeros(1, 3, 4, 5, dtype=torch.int64), norm="l3")


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_boundary_bce_hand_computed_and_balanced():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64).reshape(1, 1, 1, 1, 4)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 1, 1, 1, 4)
    # BCE of a positive is softplus(-x), of a negative softplus(x). One positive, three negatives:
    # each class carries half of the loss.
    positive = _softplus(-0.5)
    negative = (_softplus(-1.0) + _softplus(2.0) + _softplus(0.0)) / 3
    assert boundary_bce(logits, target).item() == pytest.approx(0.5 * positive + 0.5 * negative, rel=1e-12)
    plain = (positive + 3 * negative) / 4
    assert abs(boundary_bce(logits, target).item() - plain) > 0.1


def test_boundary_bce_single_class_is_the_plain_mean():
    logits = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64).reshape(1, 1, 1, 1, 3)
    target = torch.zeros_like(logits)
    plain = (_softplus(0.5) + _softplus(-1.0) + _softplus(2.0)) / 3
    assert boundary_bce(logits, target).item() == pytest.approx(plain, rel=1e-12)


def test_boundary_bce_weight_masks_voxels():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 1, 2, 4, 4, generator=generator)
    target = (torch.rand(2, 1, 2, 4, 4, generator=generator) > 0.7).float()
    mask = torch.ones_like(target)
    mask[..., :2] = 0
    changed = logits.clone()
    changed[..., :2] = 50.0
    assert boundary_bce(changed, target, mask).item() == pytest.approx(boundary_bce(logits, target, mask).item())
    assert boundary_bce(logits, target, torch.zeros_like(target)).item() == 0.0


def test_boundary_bce_gradient_pushes_each_class_its_way():
    logits = torch.zeros(1, 1, 1, 2, 4, requires_grad=True)
    target = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]).reshape(1, 1, 1, 2, 4)
    boundary_bce(logits, target).backward()
    grad = logits.grad.flatten()
    assert torch.isfinite(grad).all()
    assert grad[0] < 0 and (grad[1:] > 0).all()
    # Balanced: the lone positive's gradient equals all seven negatives' together.
    assert -grad[0].item() == pytest.approx(grad[1:].sum().item(), rel=1e-6)


def test_boundary_bce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=re.escape("(1, 1, 2, 2, 3)")):
        boundary_bce(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 3))


def test_embedding_loss_module_sums_its_parts():
    generator = torch.Generator().manual_seed(6)
    outputs = {
        "embedding": torch.randn(2, 4, 2, 6, 6, generator=generator, requires_grad=True),
        "boundary": torch.randn(2, 1, 2, 6, 6, generator=generator, requires_grad=True),
    }
    instances = torch.randint(0, 5, (2, 2, 6, 6), generator=generator)
    boundary = (torch.rand(2, 1, 2, 6, 6, generator=generator) > 0.6).float()
    module = EmbeddingLoss(delta_v=0.4, delta_d=1.2, alpha=1.5, beta=0.5, gamma=0.01, norm="l1", boundary_weight=2.0)
    out = module(outputs, instances, boundary)
    assert set(out) == {"loss", "intra", "inter", "reg", "boundary"}
    disc = discriminative_loss(outputs["embedding"], instances, 0.4, 1.2, 1.5, 0.5, 0.01, "l1")
    bce = boundary_bce(outputs["boundary"], boundary)
    assert out["boundary"].item() == pytest.approx(bce.item())
    assert out["loss"].item() == pytest.approx(disc["loss"].item() + 2.0 * bce.item(), rel=1e-6)
    out["loss"].backward()
    assert outputs["boundary"].grad.abs().sum() > 0
    assert outputs["embedding"].grad.abs().sum() > 0


def test_embedding_loss_module_without_boundary_output():
    outputs = {"embedding": torch.randn(1, 2, 1, 4, 4)}
    instances = torch.ones(1, 1, 4, 4, dtype=torch.int64)
    target = torch.zeros(1, 1, 1, 4, 4)
    assert EmbeddingLoss(boundary_weight=0.0)(outputs, instances, target)["boundary"].item() == 0.0
    with pytest.raises(ValueError, match="boundary"):
        EmbeddingLoss(boundary_weight=1.0)(outputs, instances, target)
    with pytest.raises(ValueError, match="norm"):
        EmbeddingLoss(norm="cosine")


def test_boundary_bce_matches_torch_pos_weight_definition():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 1, 3, 5, 5, generator=generator, dtype=torch.float64)
    target = (torch.rand(1, 1, 3, 5, 5, generator=generator, dtype=torch.float64) > 0.8).double()
    positives = target.sum()
    negatives = target.numel() - positives
    summed = F.binary_cross_entropy_with_logits(logits, target, pos_weight=negatives / positives, reduction="sum")
    assert boundary_bce(logits, target).item() == pytest.approx((summed / (2 * negatives)).item(), rel=1e-12)


def test_multitask_loss_adds_the_masked_affinity_term():
    from melecole.losses import EmbeddingLoss, MultitaskLoss

    torch.manual_seed(0)
    instances = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    instances[:, :, :, :2], instances[:, :, :, 2:] = 1, 2
    batch = {"instances": instances, "boundary": torch.zeros(1, 1, 2, 4, 4),
             "affinities": torch.ones(1, 3, 2, 4, 4), "affinity_mask": torch.ones(1, 3, 2, 4, 4)}
    outputs = {"embedding": torch.randn(1, 2, 2, 4, 4, requires_grad=True),
               "boundary": torch.randn(1, 1, 2, 4, 4), "affinities": torch.full((1, 3, 2, 4, 4), 3.0, requires_grad=True)}
    loss = MultitaskLoss(EmbeddingLoss(), affinity_weight=2.0)
    terms = loss(outputs, batch)
    expected_bce = torch.nn.functional.softplus(torch.tensor(-3.0))  # -log(sigmoid(3)) for all-positive targets
    torch.testing.assert_close(terms["affinity"], expected_bce)
    plain = EmbeddingLoss()(outputs, batch["instances"], batch["boundary"])["loss"]
    torch.testing.assert_close(terms["loss"], plain + 2.0 * expected_bce)
    terms["loss"].backward()
    assert outputs["affinities"].grad.abs().sum() > 0
    # Masked-out pairs do not count: a wrong prediction there changes nothing.
    batch["affinity_mask"][:, 0] = 0
    wrong = outputs["affinities"].detach().clone()
    wrong[:, 0] = -5.0
    torch.testing.assert_close(loss({**outputs, "affinities": wrong}, batch)["affinity"], expected_bce)
    with pytest.raises(ValueError, match="no affinity targets"):
        loss(outputs, {"instances": instances, "boundary": batch["boundary"]})


def _two_clusters(separation: torch.Tensor, direction: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two instances of three voxels each, every voxel on its instance's mean: mean 1 at the
    origin, mean 2 at ``separation`` along ``direction`` (embedding dim 2)."""
    unit = torch.tensor(direction, dtype=torch.float64)
    unit = unit / unit.norm()
    means = torch.stack([torch.zeros(2, dtype=torch.float64), separation * unit])  # (2, E)
    embedding = means.repeat_interleave(3, dim=0).T.reshape(1, 2, 1, 1, 6)
    instances = torch.tensor([1, 1, 1, 2, 2, 2]).reshape(1, 1, 1, 6)
    return embedding, instances


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_the_push_term_alone_moves_close_means_apart_until_they_are_two_delta_d_apart(norm):
    delta_d = 1.5
    direction = (0.6, 0.8)  # oblique: the L1 and L2 distances differ
    embedding, instances = _two_clusters(torch.tensor(0.5, dtype=torch.float64), direction)
    embedding.requires_grad_()
    # No pull (alpha = 0), no regulariser (gamma = 0): the push term is all there is.
    out = discriminative_loss(embedding, instances, delta_v=0.5, delta_d=delta_d, alpha=0.0, gamma=0.0, norm=norm)
    out["loss"].backward()
    grad = embedding.grad.reshape(2, 6).T  # (voxel, E)
    # inter = (2 delta_d - d)^2 for both ordered pairs; each voxel carries a third of its mean's gradient.
    unit = torch.tensor(direction, dtype=torch.float64)
    distance, away = (0.5, unit) if norm == "l2" else (0.5 * float(unit.sum()), torch.ones(2, dtype=torch.float64))
    assert out["inter"].item() == pytest.approx((2 * delta_d - distance) ** 2, rel=1e-12)
    expected = 2 * (2 * delta_d - distance) / 3 * away  # d loss / d voxel of instance 1: away from 2
    torch.testing.assert_close(grad[:3], expected.expand(3, 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad[3:], -expected.expand(3, 2), rtol=1e-12, atol=0)
    # A descent step moves instance 1 away from instance 2 and instance 2 away from instance 1.
    stepped = (embedding - 0.05 * embedding.grad).detach().reshape(2, 6).T
    gap = stepped[3:].mean(0) - stepped[:3].mean(0)
    assert float(gap @ unit) > 0.5

    for separation in (2 * delta_d, 2 * delta_d + 0.25, 10.0):
        direction_here = direction if norm == "l2" else (1.0, 0.0)  # L1 distance = separation along an axis
        apart, instances = _two_clusters(torch.tensor(separation, dtype=torch.float64), direction_here)
        apart.requires_grad_()
        out = discriminative_loss(apart, instances, delta_v=0.5, delta_d=delta_d, alpha=0.0, gamma=0.0, norm=norm)
        out["loss"].backward()
        assert out["loss"].item() == 0.0 and out["inter"].item() == 0.0, separation
        assert (apart.grad == 0).all(), separation
    # Just inside 2 delta_d (and beyond delta_d) the means are still pushed.
    close, instances = _two_clusters(torch.tensor(2 * delta_d - 0.25, dtype=torch.float64), (1.0, 0.0))
    out = discriminative_loss(close, instances, delta_v=0.5, delta_d=delta_d, alpha=0.0, gamma=0.0, norm=norm)
    assert out["loss"].item() == pytest.approx(0.25**2, rel=1e-12)


def test_gradient_descent_on_the_push_term_alone_separates_the_means_to_two_delta_d():
    delta_d = 1.5
    embedding, instances = _two_clusters(torch.tensor(0.2, dtype=torch.float64), (0.6, 0.8))
    embedding.requires_grad_()
    optimizer = torch.optim.SGD([embedding], lr=0.2)
    distances = []
    for _ in range(60):
        optimizer.zero_grad()
        out = discriminative_loss(embedding, instances, delta_d=delta_d, alpha=0.0, gamma=0.0)
        out["loss"].backward()
        optimizer.step()
        means = embedding.detach().reshape(2, 6).T.reshape(2, 3, 2).mean(1)
        distances.append(float((means[1] - means[0]).norm()))
    assert all(b > a for a, b in zip(distances, distances[1:]) if a < 2 * delta_d - 1e-9)  # only ever apart
    assert distances[-1] == pytest.approx(2 * delta_d, abs=1e-6)
    final = discriminative_loss(embedding, instances, delta_d=delta_d, alpha=0.0, gamma=0.0)
    assert final["loss"].item() < 1e-12
