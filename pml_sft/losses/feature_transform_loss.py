import inspect

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.losses import BaseLossWrapper, BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..augmenters import BaseFeatureAugmenter, SphericalFeatureTransform
from ..utils.checks import check_embeddings, check_finite, check_labels

NO_LABELS = "augmented samples exist only through the labels of their target classes"
# PML losses the wrapper refuses, and why. Every other PML loss is supported.
UNSUPPORTED_LOSSES = {
    "ManifoldLoss": f"it does not accept labels, and {NO_LABELS}",
    "VICRegLoss": f"it is a self-supervised loss that takes no labels, and {NO_LABELS}",
    "SelfSupervisedLoss": "it compares embeddings with ref_emb views and takes no "
    f"labels, and {NO_LABELS}",
    "SmoothAPLoss": "it needs the same number of samples in every class, in "
    "contiguous blocks, which randomly chosen target classes do not keep",
    "CrossBatchMemory": "it would enqueue the synthetic samples in its memory bank, "
    "where they would serve as references in later steps although they were made "
    "from the centres of an older model; synthetic samples never enter a memory bank "
    "(CrossBatchMemory cannot wrap this wrapper either: it accepts only its own list "
    "of losses)",
}

# Miners the wrapper cannot run on the enlarged batch, and why.
UNSUPPORTED_MINERS = {
    "EmbeddingsAlreadyPackagedAsTriplets": "it reads triplets from the batch layout "
    "(a, p, n, a, p, n, ...), which appended augmented samples do not follow; use it "
    "as the outer miner instead (indices_tuple), whose triplets stay valid",
}

# Options of PML losses that belong to the inner loss: the wrapper computes no loss
# of its own, so it refuses them rather than ignore them.
INNER_LOSS_OPTIONS = ("reducer", "distance", "embedding_regularizer")

SYNTHETIC_ROLES = ("any", "partner", "negative")
OBJECTIVES = ("joint", "separate")


def pml_loss_names():
    """The losses PML exports (classes, not base classes)."""
    return sorted(
        name
        for name, obj in vars(pml_losses).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.nn.Module)
        and not name.startswith(("Base", "Generic"))
    )


class FeatureTransformLoss(BaseLossWrapper, BaseMetricLossFunction):
    """Wraps any PML loss and trains it on the batch enlarged by feature-space
    augmentation.

    Each call builds augmented samples with ``transform`` and appends them to the batch
    with their target labels, so the inner loss, miner, reducer and distance see them
    as ordinary samples.

    Args:
        loss: the PML loss to wrap.
        transform: a :class:`~pml_sft.augmenters.BaseFeatureAugmenter`. When None,
            one of ``transform_class`` (:class:`~pml_sft.SphericalFeatureTransform`)
            is built from the remaining keyword arguments, e.g.
            ``FeatureTransformLoss(loss, num_targets=2, centers=...)``.
        miner: optional miner, run on the enlarged batch. An ``indices_tuple`` passed
            to ``forward`` (mined on the original rows, e.g. by a trainer's miner)
            stays valid and is kept: with a miner the two are concatenated; without
            one, all tuples that involve augmented rows are added to it.
        aug_weight: w. ``objective="joint"``: the loss is ``(1 - w) * L(batch) + w *
            L(batch + augmented)``, w in [0, 1]; w = 1 (default) needs a single
            inner-loss call. ``objective="separate"``: ``L(batch) + w * L_aug``, w >= 0.
        objective: ``"joint"`` (one loss on the enlarged batch) or ``"separate"``:
            ``L_aug`` is the inner loss on the enlarged batch counting only the tuples
            (pairs or triplets) that involve an augmented row, so the batch-level
            normalisation of the plain loss is untouched.
        warmup_iterations: training iterations without augmentation at the start
            (a late start). Default: half of ``total_iterations`` when that is
            given, else 0.
        ramp_iterations: after warm-up, w rises linearly from 0 to ``aug_weight`` over
            this many iterations. Default: a quarter of ``total_iterations`` when
            that is given, else 0.
        total_iterations: the length of training, if known: it sets the schedule
            validated in the pretrained study (benchmarks/results): no augmentation
            for the first half, then the weight ramps to ``aug_weight`` over the
            next quarter. Without it augmentation starts at once.
        synthetic_role: what augmented samples may be in the tuples: ``"any"``
            (default: anchors, positives and negatives), ``"partner"`` (positives or
            negatives of real anchors) or ``"negative"`` (only negatives of real
            anchors; positive pairs are real). Roles act through ``indices_tuple``:
            proxy and classification losses only see which rows appear in it.
        **kwargs: options of the transform (when ``transform`` is None) and
            ``collect_stats``.

    It is a ``BaseMetricLossFunction`` (so PML's ``DistributedLossWrapper`` accepts
    it) but computes no loss of its own: ``reducer``, ``distance`` and
    ``embedding_regularizer`` belong to the inner loss and are refused here. Under
    ``DistributedLossWrapper`` (efficient=False) every rank sees the gathered batch
    and makes the same augmented samples, which gives the loss and gradients of one
    process on the whole batch.

    Augmentation happens only in training mode (``.train()``, the default); after
    ``.eval()`` the wrapper returns the plain inner loss. The iteration counter is a
    buffer, so the schedule survives ``state_dict`` save and load.
    """

    transform_class = SphericalFeatureTransform
    accepts_transform = True

    def __init__(
        self,
        loss,
        transform=None,
        miner=None,
        aug_weight=1.0,
        objective="joint",
        warmup_iterations=None,
        ramp_iterations=None,
        total_iterations=None,
        synthetic_role="any",
        collect_stats=None,
        **kwargs,
    ):
        refused = [k for k in INNER_LOSS_OPTIONS if k in kwargs]
        if refused:
            raise TypeError(
                f"{type(self).__name__} computes no loss of its own, so {refused} "
                "would have no effect; set them on the inner loss instead"
            )
        if transform is not None and not self.accepts_transform:
            raise TypeError(
                f"{type(self).__name__} builds its own transform; use "
                "FeatureTransformLoss(loss, transform=...) to pass one"
            )
        if transform is not None and kwargs:
            raise TypeError(
                f"options {sorted(kwargs)} belong to the transform; pass them to the "
                "transform you give, not to the loss wrapper"
            )
        super().__init__(loss=loss, collect_stats=collect_stats)
        # BaseMetricLossFunction made a default distance and reducer; the inner
        # loss's apply, so none is kept here (nor logged by record-keeper)
        del self.distance, self.reducer
        if transform is None:
            transform = self.transform_class(collect_stats=collect_stats, **kwargs)
        if not isinstance(transform, BaseFeatureAugmenter):
            raise TypeError(
                f"transform must be a pml_sft augmenter, got {type(transform).__name__}"
            )
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
        if total_iterations is not None and not (
            isinstance(total_iterations, int) and total_iterations >= 1
        ):
            raise ValueError(
                f"total_iterations must be None or an int >= 1, got {total_iterations!r}"
            )
        if warmup_iterations is None:
            warmup_iterations = (total_iterations or 0) // 2
        if ramp_iterations is None:
            ramp_iterations = (total_iterations or 0) // 4
        for name, value in (
            ("warmup_iterations", warmup_iterations),
            ("ramp_iterations", ramp_iterations),
        ):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if synthetic_role not in SYNTHETIC_ROLES:
            raise ValueError(
                f"synthetic_role must be one of {SYNTHETIC_ROLES}, got {synthetic_role!r}"
            )
        if miner is not None and type(miner).__name__ in UNSUPPORTED_MINERS:
            raise ValueError(
                f"{type(self).__name__} cannot mine with {type(miner).__name__}: "
                f"{UNSUPPORTED_MINERS[type(miner).__name__]}"
            )
        self.loss = loss
        self.transform = transform
        self.miner = miner
        self.aug_weight = float(aug_weight)
        self.objective = objective
        self.warmup_iterations = warmup_iterations
        self.ramp_iterations = ramp_iterations
        self.synthetic_role = synthetic_role
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.add_to_recordable_attributes(
            list_of_names=[
                "aug_weight",
                "objective",
                "warmup_iterations",
                "ramp_iterations",
                "synthetic_role",
            ],
            is_stat=False,
        )
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_augmented",
                "current_aug_weight",
                "mean_center_angle",
                "share_nearest_target",
            ],
            is_stat=True,
        )

    @staticmethod
    def supported_losses():
        """The PML losses this wrapper can wrap: every loss PML exports except those
        in :data:`UNSUPPORTED_LOSSES`. Losses that are not PML's (your own) are
        accepted too."""
        return [n for n in pml_loss_names() if n not in UNSUPPORTED_LOSSES]

    @classmethod
    def check_loss_support(cls, loss_name):
        if loss_name in UNSUPPORTED_LOSSES:
            raise ValueError(
                f"{cls.__name__} cannot wrap {loss_name}: {UNSUPPORTED_LOSSES[loss_name]}"
            )

    def current_weight(self):
        """Weight of the augmented objective at the current iteration."""
        t = int(self.iteration) - self.warmup_iterations
        if t <= 0:
            return 0.0
        if self.ramp_iterations > 0:
            return self.aug_weight * min(1.0, t / self.ramp_iterations)
        return self.aug_weight

    def forward(
        self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        self.reset_stats()
        if ref_emb is not None or ref_labels is not None:
            raise ValueError(
                f"{type(self).__name__} does not take ref_emb/ref_labels: augmented "
                "samples join the batch itself (with DistributedLossWrapper, use "
                "efficient=False)"
            )
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        labels = c_f.to_device(labels, embeddings)
        weight = 0.0
        if self.training:
            self.iteration.add_(1)
            weight = self.current_weight()
        self.current_aug_weight = weight
        self.num_augmented = 0
        self.mean_center_angle = self.share_nearest_target = 0.0
        n = embeddings.shape[0]
        if n == 0:  # no samples, no loss (some PML losses return NaN here)
            return embeddings.sum() * 0.0
        if weight > 0:
            aug, aug_labels, _ = self.transform(embeddings, labels)
            self.num_augmented = aug.shape[0]
            # the transform's statistics, for loggers that only look at the loss
            # (powerful-benchmarker's record-keeper tables)
            for name in ("mean_center_angle", "share_nearest_target"):
                setattr(self, name, getattr(self.transform, name, 0.0))
        else:
            check_finite(embeddings, "embeddings")  # the transform did not check
        if self.num_augmented == 0:
            return self.checked(self.inner_loss(embeddings, labels, indices_tuple, n))
        all_emb = torch.cat([embeddings, aug])
        all_labels = torch.cat([labels, aug_labels])
        if self.objective == "separate":
            plain = self.inner_loss(embeddings, labels, indices_tuple, n)
            extra = self.inner_loss(all_emb, all_labels, None, n, augmented_only=True)
            return self.checked(self.mix(plain, extra, 1.0, weight))
        loss = self.inner_loss(all_emb, all_labels, indices_tuple, n)
        if weight < 1:
            plain = self.inner_loss(embeddings, labels, indices_tuple, n)
            loss = self.mix(plain, loss, 1 - weight, weight)
        return self.checked(loss)

    @staticmethod
    def mix(plain, augmented, plain_weight, weight):
        if not (torch.is_tensor(plain) and torch.is_tensor(augmented)):
            raise TypeError(
                "mixing the plain and augmented losses needs reduced losses, but the "
                f"inner loss returned {type(plain).__name__} (e.g. DoNothingReducer); "
                "use a reducer that returns a tensor, or aug_weight=1 with "
                "objective='joint'"
            )
        return plain_weight * plain + weight * augmented

    def checked(self, loss):
        """The loss, unless it is NaN or inf (the inputs were finite, so the inner
        loss overflowed or failed): then a clear error instead of a silent NaN."""
        if torch.is_tensor(loss) and not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(
                f"{type(self.loss).__name__} returned a non-finite loss ({loss.detach()}) "
                "for finite embeddings"
            )
        return loss

    def inner_loss(self, embeddings, labels, outer, n, augmented_only=False):
        indices = self.create_indices_tuple(
            embeddings, labels, outer, n, augmented_only
        )
        return self.loss(embeddings, labels, indices)

    def create_indices_tuple(self, embeddings, labels, outer, n, augmented_only):
        """The tuples the inner loss sees: the miner's (on the enlarged batch) and
        the outer ones, restricted to the synthetic samples' role."""
        has_augmented = embeddings.shape[0] > n
        restrict = has_augmented and (self.synthetic_role != "any" or augmented_only)
        if self.miner is not None:
            indices = self.miner(embeddings, labels)
            if outer is not None:
                indices = c_f.concatenate_indices_tuples(
                    indices, convert_like(outer, indices, labels)
                )
        elif outer is not None:
            indices = outer
            if has_augmented:
                with_augmented = tuples_with_rows_from(labels, len(outer), n)
                indices = c_f.concatenate_indices_tuples(indices, with_augmented)
        elif restrict:
            indices = lmu.get_all_pairs_indices(labels)
        else:
            return None
        if restrict:
            indices = restrict_roles(indices, n, self.synthetic_role, augmented_only)
        return indices


def convert_like(indices_tuple, like, labels):
    """``indices_tuple`` as pairs or triplets, whichever ``like`` is."""
    if len(indices_tuple) == len(like):
        return indices_tuple
    if len(like) == 4:
        return lmu.convert_to_pairs(indices_tuple, labels)
    return lmu.convert_to_triplets(indices_tuple, labels)


def tuples_with_rows_from(labels, tuple_size, first):
    """All pairs (tuple_size 4) or triplets (3) that involve a row >= ``first``."""
    if tuple_size == 4:
        indices = lmu.get_all_pairs_indices(labels)
    else:
        indices = lmu.get_all_triplets_indices(labels)
    return restrict_roles(indices, first, "any", augmented_only=True)


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
