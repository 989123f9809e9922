from ..augmenters import FeatureTranslation
from .feature_transform_loss import FeatureTransformLoss


class FeatureTranslationLoss(FeatureTransformLoss):
    """:class:`FeatureTransformLoss` with the translation baseline
    (:class:`~pml_sft.FeatureTranslation`); takes mixed keyword arguments like
    :class:`SFTLoss`, e.g. ``FeatureTranslationLoss(loss, num_targets=2)``."""

    transform_class = FeatureTranslation
    accepts_transform = False
