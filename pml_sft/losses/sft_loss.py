from .feature_transform_loss import FeatureTransformLoss


class SFTLoss(FeatureTransformLoss):
    """:class:`FeatureTransformLoss` with the Spherical Feature Transform
    (:class:`~pml_sft.SphericalFeatureTransform`).

    ``SFTLoss(loss, num_targets=2, centers=..., miner=..., aug_weight=...)``: options
    of the transform and of the wrapper may be mixed; each goes where it belongs.
    """

    accepts_transform = False
