from ..augmenters import SphericalFeatureTransform
from .feature_transform_loss import FeatureTransformLoss


class SFTLoss(FeatureTransformLoss):
    """The Spherical Feature Transform wrapper (Zhu et al., ECCV 2020) with the
    signature of :class:`pml_sft.upstream.sft_loss.SFTLoss`, the file proposed to
    PML, and the same samples for the same random state; pml-sft adds the input
    checks, the statistics and keyed draws under torch.distributed.

    ``SFTLoss(loss, miner=None, num_targets=1, total_iterations=None,
    warmup_iterations=None, ramp_iterations=None)``. For other centres, a generator
    or the ablation options build the augmenter yourself:
    ``FeatureTransformLoss(loss, SphericalFeatureTransform(...))``.
    """

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
                "FeatureTransformLoss(loss, SphericalFeatureTransform(...))"
            )
        augmenter = SphericalFeatureTransform(
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
