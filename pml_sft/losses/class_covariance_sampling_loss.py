from typing import Optional

import torch

from ..augmenters import ClassCovarianceSampling
from ..utils.checks import checked_keywords
from .checked_loss import MOVED
from .feature_transform_loss import FeatureTransformLoss
from .proxy_synthesis_loss import check_table_fits_proxies


class ClassCovarianceSamplingLoss(FeatureTransformLoss):
    """A PML loss trained on each batch plus samples drawn from each class's
    estimated covariance (:class:`~pml_sft.ClassCovarianceSampling`). The estimate
    is updated at every training call, the warm-up included, before the draw.

    Args:
        loss: the PML loss to wrap.
        num_classes: number of classes (labels 0 .. num_classes - 1).
        embedding_size: the embeddings' size.
        miner: an optional miner, run on the enlarged batch.
        num_samples: new samples per sample (1).
        strength: the covariance's scale, ISDA's lambda (0.5).
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the next
            quarter.
        warmup_iterations: iterations before augmentation starts (default half of
            ``total_iterations``; 0: from the first call). This or
            ``total_iterations`` is required (a ValueError names both otherwise).
        ramp_iterations: iterations of the ramp (default a quarter of
            ``total_iterations``, else 0).
        generator: a ``torch.Generator`` for the draws.
        collect_stats: also make the augmenter collect its statistics.
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        num_classes: int,
        embedding_size: int,
        miner: Optional[torch.nn.Module] = None,
        num_samples: int = 1,
        strength: float = 0.5,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        collect_stats: Optional[bool] = None,
    ):
        augmenter = ClassCovarianceSampling(
            num_classes,
            embedding_size,
            num_samples,
            strength,
            generator=generator,
            collect_stats=collect_stats,
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
            loss, num_classes, embedding_size, "ClassCovarianceSamplingLoss"
        )
        augmenter.updates_when_augmenting = False  # every training call: below

    def check_inputs(self, embeddings, labels, indices_tuple=None):
        """The entry's check, then (the inputs known good) the class estimates
        updated with the batch at every call in training mode with gradients
        enabled, the warm-up included (as ISDA estimates from the start), before
        the call's draw."""
        super().check_inputs(embeddings, labels, indices_tuple)
        if self.training and torch.is_grad_enabled() and len(embeddings):
            unit, _ = self.augmenter.directions(embeddings.detach())
            self.augmenter.update(unit, labels.to(embeddings.device).long())
