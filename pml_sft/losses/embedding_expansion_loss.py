from typing import Optional

import torch

from ..augmenters import EmbeddingExpansion
from ..utils.checks import checked_keywords
from .checked_loss import MOVED
from .feature_transform_loss import FeatureTransformLoss


class EmbeddingExpansionLoss(FeatureTransformLoss):
    """A PML loss trained on each batch plus its Embedding Expansion points
    (:class:`~pml_sft.EmbeddingExpansion`: ``num_points`` points between every
    same-class pair, labelled with the class): ``FeatureTransformLoss(loss,
    EmbeddingExpansion(num_points), miner, ...)`` in one line.

    Args:
        loss: the PML loss to wrap (its ``distance``/``reducer`` apply).
        miner: an optional miner, run on the enlarged batch.
        num_points: points per pair (the paper's default: 2).
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the next
            quarter.
        warmup_iterations: iterations before augmentation starts (default half of
            ``total_iterations``; 0: from the first call). This or
            ``total_iterations`` is required (a ValueError names both otherwise).
        ramp_iterations: iterations of the ramp (default a quarter of
            ``total_iterations``, else 0).
        collect_stats: also make the augmenter collect its statistics, copied here.
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        num_points: int = 2,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(
            loss,
            EmbeddingExpansion(num_points, collect_stats=collect_stats),
            miner,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
