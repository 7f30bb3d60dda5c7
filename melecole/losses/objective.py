"""The training objective with a contrastive term: phases and weights over the steps.

Modes (``train.contrastive.mode``): ``supervised`` (no contrastive branch; not handled here),
``pretrain`` (contrastive only for the first ``pretrain_steps``, then supervised fine-tuning of
the same network) and ``joint`` (supervised + ``weight`` * contrastive at every step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from melecole.losses.contrastive import feature_spread, info_nce


@dataclass(frozen=True)
class ContrastivePlan:
    """Which terms count at which step.

    Attributes:
        mode: ``"pretrain"`` or ``"joint"``.
        weight: weight of the contrastive term in joint training.
        pretrain_steps: steps of contrastive-only training before fine-tuning (pretrain mode).
    """

    mode: Literal["pretrain", "joint"]
    weight: float = 1.0
    pretrain_steps: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("pretrain", "joint"):
            raise ValueError(f"mode must be 'pretrain' or 'joint', got '{self.mode}'")
        if self.weight < 0 or self.pretrain_steps < 0:
            raise ValueError(f"weight {self.weight} and pretrain_steps {self.pretrain_steps} must be non-negative")

    def weights(self, step: int) -> tuple[float, float]:
        """(supervised weight, contrastive weight) at the 1-based optimiser ``step``."""
        if self.mode == "joint":
            return 1.0, self.weight
        return (0.0, 1.0) if step <= self.pretrain_steps else (1.0, 0.0)

    def contrastive(self, step: int) -> bool:
        """Whether ``step`` needs the second view and the momentum network."""
        return self.weights(step)[1] > 0


class ContrastiveObjective(nn.Module):
    """``supervised_weight * supervised loss + contrastive_weight * InfoNCE``, weights from a plan.

    The supervised terms are always computed and reported (with weight 0 while pre-training, so
    every head still takes part in the backward pass and DDP sees all parameters used).

    Args:
        supervised: ``supervised(outputs, batch) -> terms`` with a ``"loss"`` entry.
        temperature: InfoNCE temperature.
        plan: the phases.
    """

    def __init__(self, supervised: nn.Module, temperature: float, plan: ContrastivePlan) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.supervised = supervised
        self.temperature = float(temperature)
        self.plan = plan

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                step: int) -> dict[str, torch.Tensor]:
        """Terms ``loss``, ``supervised`` (and its parts) and, with queries, ``contrastive`` and
        ``feature_spread`` (the collapse indicator of the queries)."""
        supervised_weight, contrastive_weight = self.plan.weights(step)
        terms = dict(self.supervised(outputs, batch))
        terms["supervised"] = terms["loss"]
        total = supervised_weight * terms["loss"]
        if "queries" in outputs:
            valid = batch["valid"].reshape(-1)
            # (volume, label) identities, when the batch and the queue carry them, keep a query's
            # own neuron out of its negatives across samples and batches.
            identities = batch.get("pair_identity")
            nce = info_nce(outputs["queries"], outputs["keys"], batch["pair_labels"].reshape(-1), outputs["queue"],
                           self.temperature, valid, None if identities is None else identities.reshape(-1, 2),
                           outputs.get("queue_identity"))
            terms["contrastive"] = nce
            queries = outputs["queries"][valid]
            terms["feature_spread"] = feature_spread(queries if queries.shape[0] >= 2 else outputs["queries"])
            total = total + contrastive_weight * nce
        terms["loss"] = total
        return terms
