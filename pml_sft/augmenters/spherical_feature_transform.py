import torch

from ..upstream.sft_loss import _rotate
from .base_feature_augmenter import BaseFeatureAugmenter


class SphericalFeatureTransform(BaseFeatureAugmenter):
    """Spherical Feature Transform (Zhu et al., ECCV 2020).

    Each embedding x of class i becomes ``R_ij x``, where ``R_ij`` is the minimal
    rotation carrying the unit centre of class i onto the unit centre of target class
    j; the new sample is labelled j. Rotations keep the feature's norm and its angle
    to its class centre, i.e. they assume classes have similar covariance *on the
    sphere*.

    Call it like a miner: ``aug_emb, aug_labels, source_idx = sft(embeddings, labels)``.

    Args:
        centers: a :class:`~pml_sft.centers.BaseClassCenters` (default: the batch's
            class means, classes with >= 2 samples).
        num_targets: target classes per sample.
        target_pool: ``"batch"`` (the batch's other classes) or ``"all"`` (every
            class with a known centre; needs centres with memory).
        generator: a ``torch.Generator`` for the target draws (saved in
            ``state_dict``).
        keyed_draws: draws from the rows' content (the default under
            torch.distributed); see :class:`BaseFeatureAugmenter`.
        collect_stats: record the statistics of :class:`BaseFeatureAugmenter`
            (``mean_center_angle``, ``share_nearest_target``, ...).
    """

    def move(
        self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> torch.Tensor:
        return _rotate(x, src, dst)
