from ..augmenters import SphericalFeatureTransform
from .built_in_augmenter_loss import BuiltInAugmenterLoss


class SFTLoss(BuiltInAugmenterLoss):
    """The Spherical Feature Transform wrapper (Zhu et al., ECCV 2020) with the
    signature of :class:`pml_sft.upstream.sft_loss.SFTLoss`, the file proposed to
    PML, and the same samples for the same random state; pml-sft adds the input
    checks, the statistics and keyed draws under torch.distributed.

    ``SFTLoss(loss, miner=None, num_targets=1, total_iterations=None,
    warmup_iterations=None, ramp_iterations=None)``. For other centres, a generator
    or the ablation options build the augmenter yourself:
    ``FeatureTransformLoss(loss, SphericalFeatureTransform(...))``.
    """

    augmenter_class = SphericalFeatureTransform
