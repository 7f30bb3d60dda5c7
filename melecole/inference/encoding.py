"""How predictions are stored: probabilities as uint8 (value / 255), embeddings as float16.

uint8 is what the field stores affinities and boundaries in (lsd, PyTorch Connectomics): a
quarter of float32's bytes, and it compresses well. The rounding error is at most 1/510, far
below the differences segmentation thresholds resolve. Training's validation applies the same
round trip, so thresholds chosen there see exactly what ``segment`` reads from disk.
"""

from __future__ import annotations

import numpy as np

PROBABILITY_SCALE = 255.0
STORED_DTYPES = {"boundary": "uint8", "affinities": "uint8", "predicted_affinities": "uint8", "embedding": "float16"}


def encode(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` in the dtype dataset ``name`` is stored with."""
    if STORED_DTYPES.get(name) == "uint8":
        values = np.asarray(values)
        if values.ndim < 2:
            return np.rint(np.clip(values, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.uint8)
        # One leading slice (channel or z-plane) at a time: the float temporaries of clip, scale
        # and rounding stay one slice large instead of twice the whole block.
        stored = np.empty(values.shape, dtype=np.uint8)
        for index in range(values.shape[0]):
            scaled = np.clip(values[index], 0.0, 1.0)
            scaled *= PROBABILITY_SCALE
            stored[index] = np.rint(scaled, out=scaled)
        return stored
    if STORED_DTYPES.get(name) == "float16":
        return values.astype(np.float16)
    raise ValueError(f"no stored encoding for prediction '{name}' (known: {', '.join(STORED_DTYPES)})")


def decode(values: np.ndarray) -> np.ndarray:
    """Stored predictions back to float32 (uint8 probabilities divided by 255; other dtypes cast)."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        decoded = values.astype(np.float32)
        decoded /= np.float32(PROBABILITY_SCALE)  # in place: one float32 copy, not two
        return decoded
    return values.astype(np.float32)


def round_trip(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predictions as ``segment`` will read them back from disk (float32, quantised)."""
    return {name: decode(encode(name, values)) if STORED_DTYPES.get(name) == "uint8" else values
            for name, values in predictions.items()}


def stored_bytes_per_voxel(channels: dict[str, int]) -> int:
    """Uncompressed bytes per voxel of the stored predictions, ``channels`` name -> channel count."""
    return sum(count * np.dtype(STORED_DTYPES[name]).itemsize for name, count in channels.items())
