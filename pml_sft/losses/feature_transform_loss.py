import inspect
import math

import torch
from pytorch_metric_learning.losses import BaseLossWrapper, BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..augmenters import BaseFeatureAugmenter, SphericalFeatureTransform
from ..utils.checks import check_embeddings, check_finite, check_labels

# Losses the wrapper refuses, and why. Every other PML loss is supported.
UNSUPPORTED_LOSSES = {
    "ManifoldLoss": "it does not accept labels, and augmented samples exist only "
    "through the labels of their target classes",
    "VICRegLoss": "it is a self-supervised loss that takes no labels, and augmented "
    "samples exist only through the labels of their target classes",
    "SelfSupervisedLoss": "it compares embeddings with ref_emb views and takes no "
    "labels, and augmented samples exist only through the labels of their target classes",
    "SmoothAPLoss": "it needs the same number of samples in every class, in "
    "contiguous blocks, which randomly chosen target classes do not keep",
}


# Miners the wrapper cannot run on the enlarged batch, and why.
UNSUPPORTED_MINERS = {
    "EmbeddingsAlreadyPackagedAsTriplets": "it reads triplets from the batch layout "
    "(a, p, n, a, p, n, ...), which appended augmented samples do not follow; use it "
    "as the outer miner instead (indices_tuple), whose triplets stay valid",
}


def split_transform_kwargs(transform_class, kwargs):
    """Split keyword arguments into those of ``transform_class`` and the rest."""
    names = set()
    for cls in transform_class.__mro__:
        if cls is BaseFeatureAugmenter.__base__:
            break
        names.update(inspect.signature(cls.__init__).parameters)
    names -= {"self", "kwargs"}
    transform_kwargs = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return transform_kwargs, rest


def _tuple_type_like(indices_tuple, like, labels):
    """Convert ``indices_tuple`` to the kind (pairs or triplets) of ``like``."""
    if len(indices_tuple) == len(like):
        return indices_tuple
    if len(like) == 4:
        return lmu.convert_to_pairs(indices_tuple, labels)
    return lmu.convert_to_triplets(indices_tuple, labels)


class FeatureTransformLoss(BaseLossWrapper, BaseMetricLossFunction):
    """Wraps any PML loss and trains it on the batch enlarged by feature-space
    augmentation.

    Each call builds augmented samples with ``transform``, appends them to the batch with
    their target labels, and returns the inner loss on the enlarged batch, so every
    loss, miner, reducer and distance sees them as ordinary samples.

    Args:
        loss: the PML loss to wrap.
        transform: a :class:`~pml_sft.augmenters.BaseFeatureAugmenter`. When None,
            one of ``default_transform_class`` (:class:`~pml_sft.SphericalFeatureTransform`)
            is built from the keyword arguments that belong to it, e.g.
            ``FeatureTransformLoss(loss, num_targets=2, centers=...)``.
        miner: optional miner, run on the enlarged batch. An ``indices_tuple`` passed
            to ``forward`` (mined on the original rows, e.g. by a trainer's miner)
            stays valid and is kept: with a miner the two are concatenated; without
            one, all tuples that involve augmented rows are added to it.
        aug_weight: w in [0, 1]. The loss is ``(1 - w) * L(batch) + w * L(batch +
            augmented)``; w = 1 (default) needs a single inner-loss call.
        warmup_iterations: training iterations without augmentation at the start.
        ramp_iterations: after warm-up, w rises linearly from 0 to ``aug_weight`` over
            this many iterations.
        augmented_anchors: if False, augmented samples only appear as positives or
            negatives of original anchors (needs a loss that takes ``indices_tuple``).

    It is a ``BaseMetricLossFunction`` (so PML's ``DistributedLossWrapper`` accepts
    it), but it computes no loss of its own: its ``distance`` and ``reducer`` are
    unused; the inner loss's apply. Under ``DistributedLossWrapper`` (efficient=False)
    every rank sees the gathered batch and makes the same augmented samples (see
    :class:`~pml_sft.augmenters.BaseFeatureAugmenter`), which gives the loss and
    gradients of one process on the whole batch.

    Augmentation happens only in training mode (``.train()``, the default); after
    ``.eval()`` the wrapper returns the plain inner loss. The iteration counter is a
    buffer, so warm-up survives ``state_dict`` save and load.
    """

    default_transform_class = SphericalFeatureTransform
    accepts_transform = True

    def __init__(
        self,
        loss,
        transform=None,
        miner=None,
        aug_weight=1.0,
        warmup_iterations=0,
        ramp_iterations=0,
        augmented_anchors=True,
        **kwargs,
    ):
        if transform is not None and not self.accepts_transform:
            raise TypeError(
                f"{type(self).__name__} builds its own transform; use "
                "FeatureTransformLoss(loss, transform=...) to pass one"
            )
        transform_kwargs, kwargs = split_transform_kwargs(
            self.default_transform_class, kwargs
        )
        if "collect_stats" in kwargs:
            transform_kwargs["collect_stats"] = kwargs["collect_stats"]
        super().__init__(loss=loss, **kwargs)
        if transform is None:
            transform = self.default_transform_class(**transform_kwargs)
        elif set(transform_kwargs) - {"collect_stats"}:
            raise TypeError(
                f"options {sorted(transform_kwargs)} belong to the transform; pass them "
                "to the transform you give, not to the loss wrapper"
            )
        if not isinstance(transform, BaseFeatureAugmenter):
            raise TypeError(
                f"transform must be a pml_sft augmenter, got {type(transform).__name__}"
            )
        if not (isinstance(aug_weight, (int, float)) and 0 <= aug_weight <= 1):
            raise ValueError(f"aug_weight must be in [0, 1], got {aug_weight!r}")
        for name, value in (
            ("warmup_iterations", warmup_iterations),
            ("ramp_iterations", ramp_iterations),
        ):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if miner is not None and type(miner).__name__ in UNSUPPORTED_MINERS:
            raise ValueError(
                f"{type(self).__name__} cannot mine with {type(miner).__name__}: "
                f"{UNSUPPORTED_MINERS[type(miner).__name__]}"
            )
        self.loss = loss
        self.transform = transform
        self.miner = miner
        self.aug_weight = float(aug_weight)
        self.warmup_iterations = warmup_iterations
        self.ramp_iterations = ramp_iterations
        self.augmented_anchors = augmented_anchors
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.add_to_recordable_attributes(
            list_of_names=["aug_weight", "warmup_iterations", "ramp_iterations"],
            is_stat=False,
        )
        self.add_to_recordable_attributes(
            list_of_names=["num_augmented", "current_aug_weight", "mean_center_angle"],
            is_stat=True,
        )

    @staticmethod
    def supported_losses():
        """Every PML loss except those in :data:`UNSUPPORTED_LOSSES`."""
        return None

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
                f"{type(self).__name__} does not take ref_emb/ref_labels: augmented samples "
                "join the batch itself (with DistributedLossWrapper, use efficient=False)"
            )
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0], embeddings.device)
        weight = 0.0
        if self.training:
            self.iteration.add_(1)
            if self.warmup_iterations == 0 and self.ramp_iterations == 0:
                weight = self.aug_weight  # no schedule: no need to read the counter
            else:
                weight = self.current_weight()
        self.current_aug_weight = weight
        self.num_augmented = 0
        self.mean_center_angle = 0.0
        n = embeddings.shape[0]
        if n == 0:  # no samples, no loss (some PML losses return NaN here)
            return embeddings.sum() * 0.0
        if weight > 0:
            all_emb, all_labels = self.transform.augmented_batch(embeddings, labels)
            self.num_augmented = all_emb.shape[0] - n
            # mirror the transform's angle statistic, so loggers that only look at
            # the loss (record-keeper, powerful-benchmarker) see it
            self.mean_center_angle = getattr(self.transform, "mean_center_angle", 0.0)
        if weight == 0 or self.num_augmented == 0:
            if weight == 0:  # the transform, which validates its input, did not run
                check_finite(embeddings, "embeddings")
            return self.checked(self.inner_loss(embeddings, labels, indices_tuple, n))
        loss = self.inner_loss(all_emb, all_labels, indices_tuple, n)
        if weight < 1:
            plain = self.inner_loss(embeddings, labels, indices_tuple, n)
            if not (torch.is_tensor(loss) and torch.is_tensor(plain)):
                raise TypeError(
                    "aug_weight < 1 mixes two reduced losses, but the inner loss "
                    f"returned {type(loss).__name__} (e.g. DoNothingReducer); use a "
                    "reducer that returns a tensor or aug_weight=1"
                )
            loss = (1 - weight) * plain + weight * loss
        return self.checked(loss)

    def checked(self, loss):
        """The loss, unless it is NaN or inf (the inputs were finite, so the inner
        loss overflowed or failed): then a clear error instead of a silent NaN."""
        if not torch.is_tensor(loss):
            return loss
        finite = (
            math.isfinite(loss.item())
            if loss.numel() == 1
            else bool(torch.isfinite(loss).all())
        )
        if not finite:
            raise FloatingPointError(
                f"{type(self.loss).__name__} returned a non-finite loss ({loss.detach()}) "
                "for finite embeddings"
            )
        return loss

    def inner_loss(self, embeddings, labels, outer_indices, num_original):
        indices = self.create_indices_tuple(
            embeddings, labels, outer_indices, num_original
        )
        return self.loss(embeddings, labels, indices)

    def create_indices_tuple(self, embeddings, labels, outer_indices, num_original):
        has_augmented = embeddings.shape[0] > num_original
        if self.miner is not None:
            indices = self.miner(embeddings, labels)
            if outer_indices is not None:
                outer = _tuple_type_like(outer_indices, indices, labels)
                indices = c_f.concatenate_indices_tuples(indices, outer)
        elif outer_indices is not None:
            indices = outer_indices
            if has_augmented:
                indices = c_f.concatenate_indices_tuples(
                    indices,
                    self.tuples_with_augmented_rows(labels, len(indices), num_original),
                )
        elif not self.augmented_anchors and has_augmented:
            indices = lmu.get_all_pairs_indices(labels)
        else:
            return None
        if not self.augmented_anchors:
            indices = self.original_anchors_only(indices, num_original)
        return indices

    @staticmethod
    def tuples_with_augmented_rows(labels, tuple_size, num_original):
        """All pairs (tuple_size 4) or triplets (3) in which an augmented row appears."""
        if tuple_size == 4:
            a1, p, a2, n = lmu.get_all_pairs_indices(labels)
            pos = (a1 >= num_original) | (p >= num_original)
            neg = (a2 >= num_original) | (n >= num_original)
            return a1[pos], p[pos], a2[neg], n[neg]
        a, p, n = lmu.get_all_triplets_indices(labels)
        keep = (a >= num_original) | (p >= num_original) | (n >= num_original)
        return a[keep], p[keep], n[keep]

    @staticmethod
    def original_anchors_only(indices, num_original):
        if len(indices) == 4:
            a1, p, a2, n = indices
            pos, neg = a1 < num_original, a2 < num_original
            return a1[pos], p[pos], a2[neg], n[neg]
        a, p, n = indices
        keep = a < num_original
        return a[keep], p[keep], n[keep]
