"""Active learning: uncertainty scores (pure numpy), candidate blocks and their ranking, proofread blocks.

The stages (``melecole active select`` / ``add``) are :mod:`melecole.stages.active`.
"""

from melecole.active.blocks import Block, RankedBlock, block_grid, block_scores, rank_blocks
from melecole.active.uncertainty import (SCORES, ViewMoments, binary_entropy, mean_entropy, tta_disagreement,
                                        uncertainty_map)

__all__ = ["SCORES", "Block", "RankedBlock", "ViewMoments", "binary_entropy", "block_grid", "block_scores",
           "mean_entropy", "rank_blocks", "tta_disagreement", "uncertainty_map"]
