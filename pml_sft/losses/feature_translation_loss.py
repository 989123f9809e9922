from typing import Optional

import torch

from ..utils.checks import checked_keywords
from .checked_loss import MOVED
from .sft_loss import SFTLoss


class FeatureTranslationLoss(SFTLoss):
    """The translation baseline (feature transfer, Yin et al., CVPR 2019):
    :class:`SFTLoss` with ``transform="translation"``, each copy moved by
    ``c_j - c_i`` on the direction of its source, norm kept. Same options as
    :class:`SFTLoss` otherwise, for like-for-like comparisons.

    Args:
        loss: the PML loss to wrap.
        miner: an optional miner, run on the enlarged batch.
        num_targets: target classes per sample.
        total_iterations, warmup_iterations, ramp_iterations: the schedule, as for
            :class:`SFTLoss` (``total_iterations`` or ``warmup_iterations`` is
            required).
        generator, keyed_draws, collect_stats: as for :class:`SFTLoss`.
    """

    @checked_keywords(
        moved={
            **MOVED,
            "transform": "SFTLoss (this is SFTLoss(transform='translation'))",
        }
    )
    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        num_targets: int = 1,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        keyed_draws: Optional[bool] = None,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(
            loss,
            miner,
            num_targets,
            "translation",
            total_iterations,
            warmup_iterations,
            ramp_iterations,
            generator,
            keyed_draws,
            collect_stats,
        )
