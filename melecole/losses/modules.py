"""Thin nn.Module wrappers over the pure loss functions, holding only their hyper-parameters."""

from __future__ import annotations

import torch
from torch import nn

from melecole.losses.boundary import boundary_bce
from melecole.losses.discriminative import NORMS, discriminative_loss
from melecole.losses.embedding_affinity import embedding_affinity_bce

INTER_PAIRS = ("all", "other_labels")


class EmbeddingLoss(nn.Module):
    """Discriminative embedding loss plus weighted class-balanced boundary BCE.

    ``loss = alpha * intra + beta * inter + gamma * reg + boundary_weight * boundary``.

    Args:
        delta_v: pull margin of :func:`~melecole.losses.discriminative.discriminative_loss`.
        delta_d: push margin (means are pushed ``2 * delta_d`` apart).
        alpha: weight of the intra-instance term.
        beta: weight of the inter-instance term.
        gamma: weight of the regularisation term.
        norm: ``"l1"`` or ``"l2"``.
        boundary_weight: weight of :func:`~melecole.losses.boundary.boundary_bce`; with 0 the
            model's ``"boundary"`` output may be absent.
        inter_pairs: ``"all"`` pushes every pair of the patch's connected pieces apart;
            ``"other_labels"`` only pairs of pieces with different ground-truth labels (pieces of
            one neuron that meet outside the patch are then neither pulled nor pushed), and
            :meth:`forward` needs the labels.
    """

    def __init__(
        self,
        delta_v: float = 0.5,
        delta_d: float = 1.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.001,
        norm: str = "l2",
        boundary_weight: float = 1.0,
        inter_pairs: str = "all",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got '{norm}'")
        if inter_pairs not in INTER_PAIRS:
            raise ValueError(f"inter_pairs must be one of {INTER_PAIRS}, got '{inter_pairs}'")
        negative = {k: v for k, v in dict(delta_v=delta_v, delta_d=delta_d, alpha=alpha, beta=beta,
                                          gamma=gamma, boundary_weight=boundary_weight).items() if v < 0}
        if negative:
            raise ValueError(f"loss parameters must be non-negative, got {negative}")
        self.delta_v = float(delta_v)
        self.delta_d = float(delta_d)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.norm = norm
        self.boundary_weight = float(boundary_weight)
        self.inter_pairs = inter_pairs

    def forward(
        self, outputs: dict[str, torch.Tensor], instances: torch.Tensor, boundary: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Computes the total loss and its parts.

        Args:
            outputs: the model's output, ``"embedding"`` (B, E, Z, Y, X) and ``"boundary"``
                (B, 1, Z, Y, X) logits.
            instances: (B, Z, Y, X) int64 instance ids, 0 = ignore.
            boundary: (B, 1, Z, Y, X) float boundary targets.
            labels: (B, Z, Y, X) ground-truth labels the instances were cut from; needed (and
                used) only with ``inter_pairs="other_labels"``.

        Returns:
            Scalars ``{"loss", "intra", "inter", "reg", "boundary"}``; ``"loss"`` is the total.
        """
        if "embedding" not in outputs:
            raise ValueError(f"model outputs {sorted(outputs)} lack 'embedding'")
        groups = None
        if self.inter_pairs == "other_labels":
            if labels is None:
                raise ValueError("inter_pairs 'other_labels' needs the patch's labels, got none")
            groups = labels
        parts = discriminative_loss(
            outputs["embedding"], instances, delta_v=self.delta_v, delta_d=self.delta_d,
            alpha=self.alpha, beta=self.beta, gamma=self.gamma, norm=self.norm, groups=groups,
        )
        if "boundary" in outputs:
            bce = boundary_bce(outputs["boundary"], boundary)
        elif self.boundary_weight == 0:
            bce = torch.zeros((), dtype=parts["loss"].dtype, device=parts["loss"].device)
        else:
            raise ValueError(f"model outputs {sorted(outputs)} lack 'boundary' but boundary_weight is {self.boundary_weight}")
        return {
            "loss": parts["loss"] + self.boundary_weight * bce,
            "intra": parts["intra"],
            "inter": parts["inter"],
            "reg": parts["reg"],
            "boundary": bce,
        }

    def extra_repr(self) -> str:
        return (f"delta_v={self.delta_v}, delta_d={self.delta_d}, alpha={self.alpha}, beta={self.beta}, "
                f"gamma={self.gamma}, norm='{self.norm}', boundary_weight={self.boundary_weight}, "
                f"inter_pairs='{self.inter_pairs}'")


class MultitaskLoss(nn.Module):
    """The embedding loss plus optional class-balanced BCEs on affinities.

    ``loss = embedding loss (with its boundary term) + affinity_weight * affinity-head BCE
    + embedding_affinity_weight * BCE of the embedding's own distance affinities``, both BCEs
    against the batch's affinity targets, masked to pairs whose partner voxel lies inside the
    patch.

    Args:
        embedding_loss: the :class:`EmbeddingLoss` to combine.
        affinity_weight: weight of the affinity-head term; used only when the model outputs
            ``"affinities"``.
        embedding_affinity_weight: weight of
            :func:`~melecole.losses.embedding_affinity.embedding_affinity_bce` (with the
            embedding loss's ``delta_d`` and norm); 0 leaves it out.
        offsets: the offsets of the batch's affinity targets; needed when
            ``embedding_affinity_weight`` > 0.
    """

    def __init__(self, embedding_loss: EmbeddingLoss, affinity_weight: float = 1.0,
                 embedding_affinity_weight: float = 0.0, offsets: list | None = None) -> None:
        super().__init__()
        if affinity_weight < 0 or embedding_affinity_weight < 0:
            raise ValueError(f"affinity_weight {affinity_weight} and embedding_affinity_weight "
                             f"{embedding_affinity_weight} must be non-negative")
        if embedding_affinity_weight > 0 and not offsets:
            raise ValueError("embedding_affinity_weight > 0 needs the affinity targets' offsets, got none")
        self.embedding_loss = embedding_loss
        self.affinity_weight = float(affinity_weight)
        self.embedding_affinity_weight = float(embedding_affinity_weight)
        self.offsets = [tuple(int(d) for d in offset) for offset in offsets or []]

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Computes the total loss and its parts from the model outputs and a training batch.

        Args:
            outputs: the model's output; ``"affinities"`` (B, C, Z, Y, X) logits is optional.
            batch: ``"instances"`` (B, Z, Y, X), ``"boundary"`` (B, 1, Z, Y, X), ``"labels"``
                (B, Z, Y, X) when the embedding loss pushes only other labels apart and, with an
                affinity head, ``"affinities"`` and ``"affinity_mask"`` (B, C, Z, Y, X).
        """
        terms = self.embedding_loss(outputs, batch["instances"], batch["boundary"], batch.get("labels"))
        if "affinities" in outputs:
            if "affinities" not in batch:
                raise ValueError("the model predicts affinities but the batch carries no affinity targets")
            bce = boundary_bce(outputs["affinities"], batch["affinities"], batch["affinity_mask"])
            terms["affinity"] = bce
            terms["loss"] = terms["loss"] + self.affinity_weight * bce
        if self.embedding_affinity_weight > 0:
            if "affinities" not in batch:
                raise ValueError("embedding_affinity_weight > 0 but the batch carries no affinity targets")
            loss = self.embedding_loss
            bce = embedding_affinity_bce(outputs["embedding"], batch["affinities"], batch["affinity_mask"],
                                         self.offsets, loss.delta_d, loss.norm)
            terms["embedding_affinity"] = bce
            terms["loss"] = terms["loss"] + self.embedding_affinity_weight * bce
        return terms
