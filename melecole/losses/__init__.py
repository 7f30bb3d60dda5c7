"""Losses: pure tensor functions and thin nn.Module wrappers over them."""

from melecole.losses.boundary import boundary_bce
from melecole.losses.discriminative import discriminative_loss
from melecole.losses.modules import EmbeddingLoss, MultitaskLoss

__all__ = ["EmbeddingLoss", "MultitaskLoss", "boundary_bce", "discriminative_loss"]
