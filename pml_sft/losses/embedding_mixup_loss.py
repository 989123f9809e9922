from typing import Optional

import torch

from ..augmenters import EmbeddingMixup
from ..utils.checks import checked_keywords
from .checked_loss import MOVED
from .feature_transform_loss import FeatureTransformLoss


class EmbeddingMixupLoss(FeatureTransformLoss):
    """Embedding mixup (Metrix, ICLR 2022) around a PML loss
    (:class:`~pml_sft.EmbeddingMixup`): the batch gains one mixed row per sample
    that has a partner of another class, and a mixed row, which belongs to both
    classes, is trained as both: ``lam * loss(batch + mixed as class a) +
    (1 - lam) * loss(batch + mixed as class b)``, as the paper weights the two
    labels. Pair losses see the mixed rows as positives of both classes in turn;
    proxy losses pull them to both proxies in turn.

    Args:
        loss: the PML loss to wrap.
        miner: an optional miner, run on each enlarged batch.
        alpha: the Beta distribution's parameter (1.0).
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the next
            quarter.
        warmup_iterations: iterations before augmentation starts (default half of
            ``total_iterations``; 0: from the first call). This or
            ``total_iterations`` is required (a ValueError names both otherwise).
        ramp_iterations: iterations of the ramp (default a quarter of
            ``total_iterations``, else 0).
        generator: a ``torch.Generator`` for the partners and the weight.
        collect_stats: also make the augmenter collect its statistics.
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        alpha: float = 1.0,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        collect_stats: Optional[bool] = None,
    ):
        augmenter = EmbeddingMixup(
            alpha, generator=generator, collect_stats=collect_stats
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

    def inner_loss(self, embeddings, labels, indices_tuple, n):
        if embeddings.shape[0] == n:
            return super().inner_loss(embeddings, labels, indices_tuple, n)
        as_first = super().inner_loss(embeddings, labels, indices_tuple, n)
        second = torch.cat([labels[:n], self.augmenter.partner_labels.to(labels)])
        as_second = super().inner_loss(embeddings, second, indices_tuple, n)
        lam = self.augmenter.lam
        if not isinstance(as_first, dict):
            return lam * as_first + (1 - lam) * as_second
        # DoNothingReducer: both labellings' entries, the second's under "_second"
        out = {k: dict(v, losses=v["losses"] * lam) for k, v in as_first.items()}
        for k, v in as_second.items():
            out[f"{k}_second"] = dict(v, losses=v["losses"] * (1 - lam))
        return out
