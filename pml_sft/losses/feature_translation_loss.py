from ..augmenters import FeatureTranslation
from .built_in_augmenter_loss import BuiltInAugmenterLoss


class FeatureTranslationLoss(BuiltInAugmenterLoss):
    """The translation baseline (x - c_i + c_j, renormalised; Yin et al., CVPR 2019)
    with the signature of :class:`SFTLoss`, for like-for-like comparisons:
    ``FeatureTranslationLoss(loss, miner=None, num_targets=1, total_iterations=None,
    warmup_iterations=None, ramp_iterations=None)``."""

    augmenter_class = FeatureTranslation
