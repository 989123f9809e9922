from ..augmenters import FeatureTranslation
from .feature_transform_loss import FeatureTransformLoss


class FeatureTranslationLoss(FeatureTransformLoss):
    """The translation baseline (x - c_i + c_j, renormalised; Yin et al., CVPR 2019)
    with the signature of :class:`SFTLoss`, for like-for-like comparisons:
    ``FeatureTranslationLoss(loss, miner=None, num_targets=1, total_iterations=None,
    warmup_iterations=None, ramp_iterations=None)``."""

    def __init__(
        self,
        loss,
        miner=None,
        num_targets=1,
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        collect_stats=None,
        **augmenter_options,
    ):
        if augmenter_options:
            raise TypeError(
                f"{type(self).__name__} takes no {sorted(augmenter_options)}: build "
                "the augmenter with them and pass it, "
                "FeatureTransformLoss(loss, FeatureTranslation(...))"
            )
        augmenter = FeatureTranslation(
            num_targets=num_targets, collect_stats=collect_stats
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
