from typing import Optional

import torch

from ..upstream.sft_loss import _class_sums as class_sums  # noqa: F401
from ..utils.checks import (
    as_count,
    check_embeddings,
    check_finite,
    check_labels,
    checked_keywords,
)
from ..utils.records import StatsOnDemand
from .class_centers import ClassCenters


def normalize_rows(x):
    """L2-normalised rows, and a mask of the rows long enough to normalise (the
    others come back as zeros)."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    eps = torch.finfo(x.dtype).eps
    return x / norms.clamp_min(eps), norms.squeeze(1) > eps


def check_sizes(num_classes, embedding_size):
    return as_count(num_classes, "num_classes"), as_count(
        embedding_size, "embedding_size"
    )


def check_labels_in_range(labels, num_classes, owner):
    if labels.numel() == 0:
        return
    lo, hi = labels.min().item(), labels.max().item()
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {owner}(num_classes="
            f"{num_classes}), got labels from {lo} to {hi}"
        )


def check_table(owner, table, embeddings, labels):
    """Inputs that fit ``owner``'s per-class table (num_classes, ..., D): labels in
    [0, num_classes), the embedding size, and the device the table is on."""
    name, (num_classes, size) = type(owner).__name__, (table.shape[0], table.shape[-1])
    if embeddings.shape[1] != size:
        raise ValueError(
            f"embeddings have size {embeddings.shape[1]} but {name} was built with "
            f"embedding_size={size}"
        )
    if table.device != embeddings.device:
        raise ValueError(
            f"{name}'s state is on {table.device} but the embeddings are on "
            f"{embeddings.device}: move it (or the loss or augmenter that holds it) "
            f"with .to({str(embeddings.device)!r})"
        )
    check_labels_in_range(labels, num_classes, name)


def centers_from_table(table, known, labels, include_absent):
    """:class:`ClassCenters` read from a (num_classes, D) table of centres, row c for
    label c, of which the rows ``known`` (num_classes,) are usable: the batch's
    classes, plus the other known ones when ``include_absent``. ``labels`` must lie
    in [0, num_classes)."""
    num_classes = table.shape[0]
    in_batch = torch.zeros(num_classes, dtype=torch.bool, device=table.device)
    in_batch[labels] = True
    # only the rows that can be returned are normalised (a table may hold many
    # more classes than a batch)
    candidates = (known & (in_batch | include_absent)).nonzero().squeeze(1)
    unit, nonzero = normalize_rows(table[candidates])
    center_labels = candidates[nonzero]
    row_of_label = torch.full((num_classes,), -1, dtype=torch.long, device=table.device)
    row_of_label[center_labels] = torch.arange(
        center_labels.shape[0], device=table.device
    )
    return ClassCenters(
        labels=center_labels,
        centers=unit[nonzero],
        in_batch=in_batch[center_labels],
        sample_rows=row_of_label[labels],
    )


class BaseClassCenters(StatsOnDemand):
    """Estimates one unit centre per class from L2-normalised embeddings.

    Subclasses implement :meth:`compute` and return a
    :class:`~pml_sft.centers.ClassCenters`. Centres are computed without gradient
    unless the estimator says it can pass gradients on (``differentiable``) and the
    caller asks for it.

    Args:
        min_samples: the fewest samples of a class in a batch for it to count (its
            meaning is the subclass's).
        collect_stats: record ``num_centers`` and ``num_batch_classes`` (default:
            PML's ``COLLECT_STATS``).
    """

    differentiable = False
    grad_enabled = True
    # whether it knows centres of classes absent from the batch (target_pool="all")
    remembers_classes = False

    @checked_keywords
    def __init__(self, min_samples: int = 1, *, collect_stats: Optional[bool] = None):
        super().__init__(collect_stats=collect_stats)
        min_samples = as_count(min_samples, "min_samples")
        self.min_samples = min_samples
        self.add_to_recordable_attributes(name="min_samples", is_stat=False)
        self.add_to_recordable_attributes(
            list_of_names=["num_centers", "num_batch_classes"], is_stat=True
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        include_absent: bool = True,
        detach: bool = True,
    ) -> ClassCenters:
        """Args:
        embeddings: (N, D) L2-normalised embeddings.
        labels: (N,) integer class labels (on the embeddings' device).
        include_absent: also return known centres of classes absent from the batch
            (only estimators with memory have any).
        detach: compute the centres without gradient; False needs a
            ``differentiable`` estimator.
        """
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        check_finite(embeddings, "embeddings")
        self.check_inputs(embeddings, labels)
        return self.estimate(embeddings, labels, include_absent, detach)

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """What this estimator needs of a batch beyond its shape (e.g. labels within
        its table): checked by every public entry, at every call, so that a
        mismatch shows at the first call and not when augmentation starts."""

    def estimate(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        include_absent: bool = True,
        detach: bool = True,
    ) -> ClassCenters:
        """:meth:`forward` without the input checks, for callers that made them
        (the augmenters)."""
        self.reset_stats()
        # whether the caller computes gradients (an evaluation does not); centres
        # with memory update only then (the centres themselves are computed under
        # no_grad when detached)
        self.grad_enabled = torch.is_grad_enabled()
        if not detach and not self.differentiable:
            raise ValueError(
                f"{type(self).__name__} cannot pass gradients through its centres "
                "(detach_centers=False needs BatchClassCenters)"
            )
        if detach:
            with torch.no_grad():
                result = self.compute(embeddings.detach(), labels, include_absent)
        else:
            result = self.compute(embeddings, labels, include_absent)
        if self.collect_stats:
            self.num_centers = len(result)
            self.num_batch_classes = int(result.in_batch.sum())
        return result

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        include_absent: bool = True,
    ) -> ClassCenters:
        """The centres of unit ``embeddings`` (detached unless ``detach=False`` was
        asked of a ``differentiable`` estimator): the batch's classes, and with
        ``include_absent`` the other classes it knows."""
        raise NotImplementedError
