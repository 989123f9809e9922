from ..upstream.sft_loss import _translate, _unit
from .base_feature_augmenter import BaseFeatureAugmenter


class FeatureTranslation(BaseFeatureAugmenter):
    """Feature translation (feature transfer, Yin et al., CVPR 2019), the baseline of SFT.

    The direction u of each embedding x of class i becomes ``u - c_i + c_j`` for a
    target class j, labelled j; with ``renormalize`` (default) the result has the
    norm of x, like SFT's rotation. It assumes every class has the same covariance in
    Euclidean space.

    Args:
        renormalize: give translated features the norm of their source (on the unit
            sphere for unit embeddings); False returns ``|x| (u - c_i + c_j)``.
        **kwargs: the options of :class:`BaseFeatureAugmenter`.
    """

    def __init__(self, renormalize=True, **kwargs):
        super().__init__(**kwargs)
        self.renormalize = renormalize
        self.add_to_recordable_attributes(name="renormalize", is_stat=False)

    def move(self, x, src, dst):
        if self.renormalize:
            return _translate(x, src, dst)
        unit, norms = _unit(x)
        return (unit - src + dst) * norms
