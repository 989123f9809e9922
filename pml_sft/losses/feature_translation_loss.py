from typing import Optional

import torch

from .sft_loss import SFTLoss


class FeatureTranslationLoss(SFTLoss):
    """The translation baseline (feature transfer, Yin et al., CVPR 2019):
    :class:`SFTLoss` with ``transform="translation"``, each copy moved by
    ``c_j - c_i`` on the direction of its source, norm kept. Same options as
    :class:`SFTLoss` otherwise, for like-for-like comparisons."""

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
