"""Embeddings -> affinities -> Mutex Watershed -> clean-up; pure functions over numpy arrays."""

from melecole.segment.affinities import cosine_affinities, embedding_affinities, valid_mask
from melecole.segment.mutex import mutex_watershed
from melecole.segment.postprocess import merge_small_segments, relabel_consecutive

__all__ = [
    "cosine_affinities",
    "embedding_affinities",
    "merge_small_segments",
    "mutex_watershed",
    "relabel_consecutive",
    "valid_mask",
]
