from typing import Optional

import torch

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
        **kwargs: ``total_iterations``, ``warmup_iterations`` (one of them is
            required: the schedule), ``ramp_iterations``, ``generator``,
            ``keyed_draws`` and ``collect_stats``, as for :class:`SFTLoss`.
    """

    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        num_targets: int = 1,
        **kwargs,
    ):
        if "transform" in kwargs:
            raise TypeError("FeatureTranslationLoss takes no transform: use SFTLoss")
        super().__init__(loss, miner, num_targets, "translation", **kwargs)
