from ..functional.center_rotation import rotate_directions_between_centers
from .base_feature_augmenter import BaseFeatureAugmenter


class SphericalFeatureTransform(BaseFeatureAugmenter):
    """Spherical Feature Transform (Zhu et al., ECCV 2020).

    Each embedding x of class i becomes ``R_ij x``, where ``R_ij`` is the minimal
    rotation carrying the unit centre of class i onto the unit centre of target class
    j; the new sample is labelled j. Rotations keep the feature on the hypersphere
    and keep its angle to its class centre, i.e. they assume classes have similar
    covariance *on the sphere*.

    Call it like a miner: ``aug_emb, aug_labels, source_idx = sft(embeddings, labels)``.
    See :class:`BaseFeatureAugmenter` for the options (centres, targets per sample,
    target pool, normalisation, detaching, generator).
    """

    def transform_rows(self, x, unit, norms, centers, src_rows, dst_rows):
        x = self.compute_dtype(x)
        if not self.normalize_embeddings:  # rotations keep norms: rotate x itself
            unit, norms = x.detach(), None
        return rotate_directions_between_centers(
            x, unit, norms, centers, src_rows, dst_rows
        )
