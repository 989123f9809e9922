from ..functional import translate
from .base_feature_augmenter import BaseFeatureAugmenter


class FeatureTranslation(BaseFeatureAugmenter):
    """Feature translation (feature transfer, Yin et al., CVPR 2019), the baseline of SFT.

    Each unit embedding x of class i becomes ``x - c_i + c_j`` for a target class j,
    L2-normalised again when ``renormalize`` is True (default), labelled j. It
    assumes every class has the same covariance in Euclidean space.

    Args:
        renormalize: project translated features back onto the unit sphere.
        **kwargs: the options of :class:`BaseFeatureAugmenter`.
    """

    def __init__(self, renormalize=True, **kwargs):
        super().__init__(**kwargs)
        self.renormalize = renormalize
        self.add_to_recordable_attributes(name="renormalize", is_stat=False)

    def move(self, x, src, dst):
        return translate(x, src, dst, renormalize=self.renormalize)
