"""Blockwise processing on daisy: geometry of blocks, resumable runs, and one module per stage.

Each stage's per-block work calls the same pure function as its whole-volume path; this package
only adds the geometry (blocks, context, id offsets, stitching) and the scheduling.
"""
