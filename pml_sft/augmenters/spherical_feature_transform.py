import torch

from ..functional.batch_rotation import SMALL_CLASS, rotate_to_class_means
from ..functional.center_rotation import rotate_directions_between_centers
from ..functional.compilation import wants_compiled_pipeline
from ..utils.target_sampling import random_offsets
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # whether a batch had a class too small for a centre (see fused_forward)
        self.small_classes_seen = False

    def transform_rows(self, x, unit, norms, centers, src_rows, dst_rows):
        x = self.compute_dtype(x)
        if not self.normalize_embeddings:  # rotations keep norms: rotate x itself
            unit, norms = x.detach(), None
        return rotate_directions_between_centers(
            x, unit, norms, centers, src_rows, dst_rows
        )

    def fused_forward(self, embeddings, labels, append=False):
        # where the fused path declines after drawing (rare: invalid rows, a zero
        # class mean, nearly antipodal centres, the first batch with a small
        # class), the general path draws again
        if not wants_compiled_pipeline():
            return None
        unique_labels, inverse, counts = torch.unique(
            labels, return_inverse=True, return_counts=True
        )
        num_classes = unique_labels.shape[0]
        if num_classes < 2:
            return None
        min_samples = self.centers.min_samples
        if self.small_classes_seen and int(counts.min()) < min_samples:
            return None  # checked before drawing: the general path's draws stay
        offsets = random_offsets(
            labels.shape[0], num_classes, labels.device, self.generator
        )
        x = self.compute_dtype(embeddings)
        # the kernels append the new rows themselves unless a dtype conversion or
        # detaching has to come between
        in_kernel = append and x is embeddings and not self.detach_augmented
        result = rotate_to_class_means(
            x, inverse, offsets, unique_labels, counts, min_samples, in_kernel
        )
        if isinstance(result, str):
            # the kernel checks class sizes (no extra sync) until a batch with a
            # small class shows that the sampler makes them: then they are checked
            # first, so that such batches skip the kernel and keep their draws
            self.small_classes_seen |= result == SMALL_CLASS
            return None
        rows, row_labels, centers, targets = result
        return self.fused_output(
            embeddings,
            labels,
            rows,
            row_labels,
            centers,
            inverse,
            targets,
            append,
            in_kernel,
        )
