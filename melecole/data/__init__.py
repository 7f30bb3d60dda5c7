"""Datasets, patch sampling and training targets."""
