"""EM data augmentation: pure numpy, explicit numpy.random.Generator, raw and labels together."""

from melecole.data.augment.params import AUGMENTATIONS, AugmentConfig
from melecole.data.augment.pipeline import Augment, Augmenter, build_augmenter, isolate, read_shape

__all__ = ["AUGMENTATIONS", "Augment", "AugmentConfig", "Augmenter", "build_augmenter", "isolate", "read_shape"]
