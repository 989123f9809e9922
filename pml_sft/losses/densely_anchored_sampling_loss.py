from typing import Optional

import torch

from ..augmenters import DenselyAnchoredSampling
from ..utils.checks import checked_keywords
from .checked_loss import MOVED
from .feature_transform_loss import FeatureTransformLoss
from .proxy_synthesis_loss import check_table_fits_proxies


class DenselyAnchoredSamplingLoss(FeatureTransformLoss):
    """A PML loss trained on each batch plus its densely anchored copies
    (:class:`~pml_sft.DenselyAnchoredSampling`: ``num_produce`` detached, scaled and
    shifted copies of every embedding, labelled with its class):
    ``FeatureTransformLoss(loss, DenselyAnchoredSampling(num_classes,
    embedding_size, num_produce), miner, ...)`` in one line. For the augmenter's
    other options, build it and pass it to :class:`~pml_sft.FeatureTransformLoss`.

    The augmenter's counts and memory start with the augmentation (after
    ``warmup_iterations``).

    Args:
        loss: the PML loss to wrap (its ``distance``/``reducer`` apply).
        num_classes: labels must lie in ``[0, num_classes)`` (the augmenter's
            memory holds one row per class).
        embedding_size: dimension of the embeddings.
        miner: an optional miner, run on the enlarged batch.
        num_produce: copies per embedding (the official default: 3).
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
        num_classes: int,
        embedding_size: int,
        miner: Optional[torch.nn.Module] = None,
        num_produce: int = 3,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        collect_stats: Optional[bool] = None,
    ):
        augmenter = DenselyAnchoredSampling(
            num_classes, embedding_size, num_produce, collect_stats=collect_stats
        )
        super().__init__(
            loss,
            augmenter,
            miner,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
        # (after the sizes are checked)
        check_table_fits_proxies(
            loss, num_classes, embedding_size, "DenselyAnchoredSamplingLoss"
        )
