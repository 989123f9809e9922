import torch

from ..functional import translate
from .base_feature_augmenter import BaseFeatureAugmenter


class FeatureTranslation(BaseFeatureAugmenter):
    """Feature translation (feature transfer, Yin et al., CVPR 2019), the baseline of SFT.

    Each embedding x of class i becomes ``x - c_i + c_j`` for a target class j, L2-
    normalised again when ``renormalize`` is True (default), labelled j. It assumes
    every class has the same covariance in Euclidean space.

    Args:
        renormalize: project translated features back onto the unit sphere.
        **kwargs: the options of :class:`BaseFeatureAugmenter`.
    """

    def __init__(self, renormalize=True, **kwargs):
        super().__init__(**kwargs)
        self.renormalize = renormalize
        self.add_to_recordable_attributes(name="renormalize", is_stat=False)

    def transform_rows(self, x, unit, norms, centers, src_rows, dst_rows):
        x = self.compute_dtype(x)
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        src = centers.index_select(0, src_rows)
        dst = centers.index_select(0, dst_rows)
        out = translate(x / norms, src, dst, renormalize=self.renormalize)
        return out if self.normalize_embeddings else out * norms
