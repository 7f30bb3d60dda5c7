"""Models: the residual 3D U-Net and the name -> constructor registry."""

from melecole.models.registry import build_model, model_names, register_model
from melecole.models.unet import UNet3D

__all__ = ["UNet3D", "build_model", "model_names", "register_model"]
