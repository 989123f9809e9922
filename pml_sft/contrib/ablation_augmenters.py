import torch

from ..augmenters import FeatureTranslation, SphericalFeatureTransform
from ..augmenters.base_feature_augmenter import nearest_is_target
from ..functional.rotation import great_circle_point


class AblationOptions:
    """The augmenter options the study ablated, added to an augmenter class
    (:class:`AblationSphericalFeatureTransform`, :class:`AblationFeatureTranslation`).

    Args:
        nearest_targets: if set (an int m), draw targets only among the m classes
            whose centres are nearest to the source's centre (hard targets, near the
            class boundary); None (default) draws from all allowed classes.
        strength: alpha in (0, 1]: move towards a centre that lies alpha of the way
            from the source centre to the target centre along the great circle;
            1 (default) is the full transform of the paper.
        consistent_only: drop new samples whose nearest centre (among the centres of
            this call) is not their target's (a label-consistency filter).
        normalize_embeddings: True (the study's setting) returns unit samples;
            False gives each new sample the norm of its source, as the core
            augmenters do.
        detach_centers: False lets gradients flow through the batch centres
            (BatchClassCenters only).
        detach_augmented: return new samples without gradient, so they act as fixed
            extra positives/negatives.
        **kwargs: the options of the augmenter class.
    """

    def __init__(
        self,
        nearest_targets=None,
        strength=1.0,
        consistent_only=False,
        normalize_embeddings=True,
        detach_centers=True,
        detach_augmented=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if nearest_targets is not None and not (
            isinstance(nearest_targets, int) and nearest_targets >= 1
        ):
            raise ValueError(
                f"nearest_targets must be None or an int >= 1, got {nearest_targets!r}"
            )
        if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if not detach_centers and not self.centers.differentiable:
            raise ValueError(
                "detach_centers=False needs centres that pass gradients "
                f"(BatchClassCenters), got {type(self.centers).__name__}"
            )
        self.nearest_targets = nearest_targets
        self.strength = float(strength)
        self.consistent_only = consistent_only
        self.normalize_embeddings = normalize_embeddings
        self.detach_centers = detach_centers
        self.detach_augmented = detach_augmented
        self.add_to_recordable_attributes(
            list_of_names=[
                "nearest_targets",
                "strength",
                "consistent_only",
                "normalize_embeddings",
                "detach_augmented",
            ],
            is_stat=False,
        )

    def restrict_scores(self, scores, unit, labels, table_labels, table):
        m = self.nearest_targets
        if m is None or m >= len(table_labels) - 1:
            return scores
        own = labels.unsqueeze(1) == table_labels.unsqueeze(0)
        rows = own.float().argmax(dim=1)  # (rows without a centre: never sources)
        table = table.detach()
        similarity = (table[rows] @ table.T).masked_fill(own, -float("inf"))
        nearest = similarity.topk(m, dim=1).indices
        near = torch.zeros_like(own).scatter_(1, nearest, True)
        return scores.masked_fill(~near, -1.0)

    def destinations(self, src, dst):
        return great_circle_point(src, dst, self.strength)

    def keep(self, aug, table, target_rows, nearest):
        if not self.consistent_only:
            return None
        return (
            nearest_is_target(aug, table, target_rows) if nearest is None else nearest
        )

    def finish(self, aug):
        if self.normalize_embeddings:
            aug = torch.nn.functional.normalize(aug, dim=1)
        return aug.detach() if self.detach_augmented else aug


class AblationSphericalFeatureTransform(AblationOptions, SphericalFeatureTransform):
    """:class:`~pml_sft.SphericalFeatureTransform` with :class:`AblationOptions`."""


class AblationFeatureTranslation(AblationOptions, FeatureTranslation):
    """:class:`~pml_sft.FeatureTranslation` with :class:`AblationOptions`."""
