import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..losses import FeatureTransformLoss
from ..upstream.sft_loss import NO_TUPLES
from ..utils import distributed

SYNTHETIC_ROLES = ("any", "partner", "negative")
OBJECTIVES = ("joint", "separate")
# PML losses that turn the tuples they are given into triplets
TRIPLET_LOSSES = (
    "DynamicSoftMarginLoss",
    "HistogramLoss",
    "MarginLoss",
    "TripletMarginLoss",
)


class AblationLoss(FeatureTransformLoss):
    """:class:`~pml_sft.FeatureTransformLoss` with the wrapper options the study
    ablated: a weight below 1, a separate augmented term and restricted roles of
    the synthetic samples.

    Args:
        loss, augmenter, miner, total_iterations, warmup_iterations,
            ramp_iterations: as in :class:`~pml_sft.FeatureTransformLoss`.
        aug_weight: w. ``objective="joint"``: ``(1 - w) L(batch) + w L(batch +
            augmented)``, w in [0, 1] (multiplied by the schedule's weight).
            ``objective="separate"``: ``L(batch) + w L_aug``, w >= 0.
        objective: ``"joint"`` or ``"separate"``: ``L_aug`` is the inner loss on
            the enlarged batch counting only the pairs or triplets that involve an
            augmented row.
        synthetic_role: what augmented samples may be in the tuples: ``"any"``,
            ``"partner"`` (positives or negatives of real anchors) or
            ``"negative"`` (only negatives of real anchors). Roles act through
            ``indices_tuple``: proxy and classification losses only see which rows
            appear in it.
    """

    def __init__(
        self,
        loss,
        augmenter,
        miner=None,
        aug_weight=1.0,
        objective="joint",
        synthetic_role="any",
        **kwargs,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}, got {objective!r}"
            )
        top = 1 if objective == "joint" else float("inf")
        if not (isinstance(aug_weight, (int, float)) and 0 <= aug_weight <= top):
            raise ValueError(
                f"aug_weight must be in [0, {top}] with objective={objective!r}, "
                f"got {aug_weight!r}"
            )
        if synthetic_role not in SYNTHETIC_ROLES:
            raise ValueError(
                f"synthetic_role must be one of {SYNTHETIC_ROLES}, got {synthetic_role!r}"
            )
        name = type(loss).__name__
        for option, value, default in (
            ("synthetic_role", synthetic_role, "any"),
            ("objective", objective, "joint"),
        ):
            if value != default and name in NO_TUPLES:
                raise ValueError(
                    f"{option}={value!r} acts through indices_tuple, which {name} "
                    "does not take"
                )
        if objective == "separate" and synthetic_role == "negative":
            if name not in TRIPLET_LOSSES:
                raise ValueError(
                    "objective='separate' with synthetic_role='negative' counts only "
                    "tuples with an augmented negative; the positive pairs that "
                    f"{name} needs per anchor are all real, so its augmented term "
                    f"would be zero (it works with {', '.join(TRIPLET_LOSSES)})"
                )
        super().__init__(loss, augmenter, miner, **kwargs)
        self.aug_weight = float(aug_weight)
        self.objective = objective
        self.synthetic_role = synthetic_role
        self.add_to_recordable_attributes(
            list_of_names=["aug_weight", "objective", "synthetic_role"], is_stat=False
        )

    def next_weight(self):
        weight = super().next_weight()
        return weight * self.aug_weight if self.objective == "joint" else weight

    def forward(
        self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        if self.objective == "joint":
            return super().forward(
                embeddings, labels, indices_tuple, ref_emb, ref_labels
            )
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("ref_emb/ref_labels are not supported")
        self.check_inputs(embeddings, labels, indices_tuple)
        labels = c_f.to_device(labels, embeddings)
        self.reset_stats()
        self.current_aug_weight = weight = self.next_weight() * self.aug_weight
        n, self.num_augmented = embeddings.shape[0], 0
        if n == 0:  # (under torch.distributed the other ranks' draws may wait)
            if weight > 0 and distributed.is_distributed():
                self.augment(embeddings, labels)
            return embeddings.sum() * 0.0
        loss = self.inner_loss(embeddings, labels, indices_tuple, n)
        if weight > 0:
            aug, aug_labels = self.augment(embeddings, labels)
            self.num_augmented = aug.shape[0]
        if self.num_augmented > 0:
            all_embeddings = torch.cat([embeddings, aug])
            all_labels = torch.cat([labels, aug_labels.to(labels.dtype)])
            extra = self.inner_loss(all_embeddings, all_labels, None, n, True)
            if not (torch.is_tensor(loss) and torch.is_tensor(extra)):
                raise TypeError(
                    "the separate objective adds reduced losses, but the inner loss "
                    f"returned {type(loss).__name__} (e.g. DoNothingReducer)"
                )
            loss = loss + weight * extra
        return self.checked(loss)

    def inner_loss(self, embeddings, labels, indices_tuple, n, augmented_only=False):
        tuples = self.create_indices_tuple(embeddings, labels, indices_tuple, n)
        has_augmented = embeddings.shape[0] > n
        if has_augmented and (self.synthetic_role != "any" or augmented_only):
            if type(self.loss).__name__ in TRIPLET_LOSSES:
                # restrict the triplets the loss will see, not pairs before they are
                # combined (a triplet with an augmented negative and a real positive
                # pair would be lost)
                if tuples is None:
                    tuples = lmu.get_all_triplets_indices(labels)
                tuples = lmu.convert_to_triplets(tuples, labels)
            elif tuples is None:
                tuples = lmu.get_all_pairs_indices(labels)
            tuples = restrict_roles(tuples, n, self.synthetic_role, augmented_only)
        return self.loss(embeddings, labels, tuples)


def restrict_roles(indices, n, role, augmented_only=False):
    """Keep the tuples in which rows >= ``n`` (augmented) play only ``role``
    ("any", "partner": not anchors, "negative": only negatives); with
    ``augmented_only``, also only the tuples that involve an augmented row."""
    if len(indices) == 4:
        a1, p, a2, neg = indices
        keep_pos = torch.ones_like(a1, dtype=torch.bool)
        keep_neg = torch.ones_like(a2, dtype=torch.bool)
        if role != "any":
            keep_pos &= a1 < n
            keep_neg &= a2 < n
        if role == "negative":
            keep_pos &= p < n
        if augmented_only:
            keep_pos &= (a1 >= n) | (p >= n)
            keep_neg &= (a2 >= n) | (neg >= n)
        return a1[keep_pos], p[keep_pos], a2[keep_neg], neg[keep_neg]
    a, p, neg = indices
    keep = torch.ones_like(a, dtype=torch.bool)
    if role != "any":
        keep &= a < n
    if role == "negative":
        keep &= p < n
    if augmented_only:
        keep &= (a >= n) | (p >= n) | (neg >= n)
    return a[keep], p[keep], neg[keep]
