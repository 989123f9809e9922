import torch

from ..functional.batch_rotation import rotate_to_class_means
from ..functional.center_rotation import rotate_directions_between_centers
from ..functional.compilation import wants_compiled_pipeline
from ..utils.target_sampling import random_other_rows
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

    def fused_forward(self, embeddings, labels):
        # where the fused path declines after drawing (rare: invalid rows, a zero
        # class mean, nearly antipodal centres), the general path draws again
        if not wants_compiled_pipeline():
            return None
        unique_labels, inverse, counts = torch.unique(
            labels, return_inverse=True, return_counts=True
        )
        num_classes = unique_labels.shape[0]
        if num_classes < 2 or int(counts.min()) < self.centers.min_samples:
            return None
        targets = random_other_rows(inverse, num_classes, self.generator)[1]
        result = rotate_to_class_means(
            self.compute_dtype(embeddings), inverse, targets, num_classes
        )
        if result is None:
            return None
        aug, centers = result
        return self.fused_output(
            embeddings, labels, unique_labels, aug, centers, inverse, targets
        )
