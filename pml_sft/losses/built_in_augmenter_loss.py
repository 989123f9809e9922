from .feature_transform_loss import FeatureTransformLoss


class BuiltInAugmenterLoss(FeatureTransformLoss):
    """A :class:`FeatureTransformLoss` that builds its own augmenter,
    ``augmenter_class(num_targets=...)``, with the signature of the upstream
    :class:`pml_sft.upstream.sft_loss.SFTLoss`. The base of :class:`SFTLoss` and
    :class:`FeatureTranslationLoss`; for any other augmenter options build the
    augmenter and pass it to :class:`FeatureTransformLoss`."""

    augmenter_class = None

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
        name = self.augmenter_class.__name__
        if augmenter_options:
            raise TypeError(
                f"{type(self).__name__} takes no {sorted(augmenter_options)}: build "
                f"the augmenter with them and pass it, FeatureTransformLoss(loss, "
                f"{name}(...))"
            )
        augmenter = self.augmenter_class(
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
