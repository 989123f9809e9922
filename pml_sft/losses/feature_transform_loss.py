import torch

from ..augmenters import BaseAugmenter
from ..upstream import sft_loss
from ..utils.checks import check_batch, check_directions

# Every PML loss the upstream SFTLoss refuses, and why; every other one is supported.
UNSUPPORTED_LOSSES = sft_loss.UNSUPPORTED_LOSSES

# Miners the wrapper cannot run on the enlarged batch, and why.
UNSUPPORTED_MINERS = {
    "EmbeddingsAlreadyPackagedAsTriplets": "it reads triplets from the batch layout "
    "(a, p, n, a, p, n, ...), which appended augmented samples do not follow; use it "
    "as the outer miner instead (indices_tuple), whose triplets stay valid",
}


class FeatureTransformLoss(sft_loss.SFTLoss):
    """Wraps a PML loss and trains it on the batch enlarged by a feature-space
    augmenter: the schedule, mining and loss of :class:`pml_sft.upstream.sft_loss.SFTLoss`
    (the file proposed to PML), with any pml-sft augmenter in place of its built-in
    rotation.

    Each call appends the augmenter's samples to the batch with their target labels,
    so the inner loss, miner, reducer and distance see them as ordinary samples.
    Inputs are checked once here (shapes, labels, NaN/inf); a non-finite loss from
    finite inputs raises ``FloatingPointError`` instead of returning NaN.

    Args:
        loss: the PML loss to wrap (its ``distance``/``reducer`` apply).
        augmenter: a built :class:`~pml_sft.augmenters.BaseFeatureAugmenter`, e.g.
            ``SphericalFeatureTransform(centers=MovingAverageClassCenters(...))``.
        miner: optional miner, run on the enlarged batch. An ``indices_tuple`` passed
            to ``forward`` (mined on the original rows) is kept: with a miner the two
            are concatenated; without one, every pair that involves an augmented row
            is added to pairs, and random triplets anchored at augmented rows (as
            many per row as were mined) to triplets.
        total_iterations, warmup_iterations, ramp_iterations: the schedule of
            :class:`~pml_sft.upstream.sft_loss.SFTLoss`: given the length of
            training, no augmentation for the first half, then the weight of the
            augmented loss ramps to 1 over the next quarter; without any of them,
            augmentation starts once the plain loss has stopped falling (100-step
            windows, < 5 % down), then ramps over half the steps so far.

    Under PML's ``DistributedLossWrapper`` (efficient=False) every rank sees the
    gathered batch and, with the augmenter's keyed draws (the default under
    torch.distributed), makes the same augmented samples. Augmentation happens only
    in training mode; the iteration counter is a buffer saved in ``state_dict``.
    """

    def __init__(
        self,
        loss,
        augmenter,
        miner=None,
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        **kwargs,
    ):
        if not isinstance(augmenter, BaseAugmenter):
            raise TypeError(
                f"augmenter must be a pml_sft augmenter, got {type(augmenter).__name__}"
            )
        if miner is not None and type(miner).__name__ in UNSUPPORTED_MINERS:
            raise ValueError(
                f"{type(self).__name__} cannot mine with {type(miner).__name__}: "
                f"{UNSUPPORTED_MINERS[type(miner).__name__]}"
            )
        super().__init__(
            loss,
            miner=miner,
            num_targets=augmenter.num_targets,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            **kwargs,
        )
        self.augmenter = augmenter
        if self.collect_stats:  # the wrapper's statistics come from the augmenter
            augmenter.collect_stats = True
        self.add_to_recordable_attributes(
            list_of_names=["mean_center_angle", "share_nearest_target"], is_stat=True
        )

    def forward(
        self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        self.check_inputs(embeddings, labels, indices_tuple)
        if embeddings.shape[0] == 0:  # no samples, no loss (some PML losses give NaN)
            self.reset_stats()
            return embeddings.sum() * 0.0
        loss = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return self.checked(loss)

    def check_inputs(self, embeddings, labels, indices_tuple=None):
        """The one check of a call: shapes, dtypes, labels, NaN/inf, and that the
        caller's ``indices_tuple`` indexes the batch."""
        check_batch(embeddings, labels)
        check_directions(embeddings, "embeddings")  # NaN/inf, zero, overflow
        if indices_tuple is not None:
            check_indices_tuple(indices_tuple, embeddings.shape[0])
        self.mean_center_angle = self.share_nearest_target = 0.0

    def checked(self, loss):
        """The loss, unless it is NaN or inf (the inputs were finite, so the inner
        loss overflowed or failed): then a clear error instead of a silent NaN."""
        if torch.is_tensor(loss) and not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(
                f"{type(self.loss).__name__} returned a non-finite loss ({loss.detach()}) "
                "for finite embeddings"
            )
        return loss

    def augment(self, embeddings, labels):
        aug, aug_labels, _ = self.augmenter.augment(embeddings, labels)
        # the augmenter's statistics, for loggers that only look at the loss
        # (powerful-benchmarker's record-keeper tables)
        for name in ("mean_center_angle", "share_nearest_target"):
            setattr(self, name, getattr(self.augmenter, name, 0.0))
        return aug, aug_labels


def check_indices_tuple(indices_tuple, n):
    """An indices_tuple (pairs or triplets) of index tensors into the n rows."""
    if not (isinstance(indices_tuple, (tuple, list)) and len(indices_tuple) in (3, 4)):
        raise ValueError(
            "indices_tuple must be a tuple of 3 (triplets) or 4 (pairs) index tensors"
        )
    filled = [(i, t) for i, t in enumerate(indices_tuple) if t.numel() > 0]
    if not filled:
        return
    bounds = torch.stack([torch.stack([t.min(), t.max()]) for _, t in filled])
    for (i, _), (lo, hi) in zip(filled, bounds.tolist()):
        if lo < 0 or hi >= n:
            raise ValueError(
                f"indices_tuple[{i}] holds indices from {lo} to {hi}, outside the "
                f"batch of {n} rows"
            )
