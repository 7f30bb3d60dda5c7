"""Scoring a segmentation against ground truth: VI split / merge and adapted Rand error."""

from melecole.evaluate.metrics import (
    adapted_rand_error,
    contingency,
    evaluate_pooled,
    evaluate_segmentation,
    variation_of_information,
)

__all__ = [
    "adapted_rand_error",
    "contingency",
    "evaluate_pooled",
    "evaluate_segmentation",
    "variation_of_information",
]
