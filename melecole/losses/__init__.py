"""Losses: pure tensor functions and thin nn.Module wrappers over them."""

from melecole.losses.boundary import boundary_bce
from melecole.losses.discriminative import discriminative_loss
from melecole.losses.modules import EmbeddingLoss

__all__ = ["EmbeddingLoss", "boundary_bce", "discriminative_loss"]
