from typing import Optional, Tuple

import torch

from ..utils import distributed
from ..utils.checks import checked_keywords
from .base_class_centers import (
    BaseClassCenters,
    centers_from_table,
    check_sizes,
    check_table,
    class_sums,
    normalize_rows,
)
from .class_centers import ClassCenters


class MovingAverageClassCenters(BaseClassCenters):
    """Class centres kept as an exponential moving average across batches.

    For every class in the batch, the L2-normalised batch mean ``m`` updates the
    running centre ``c <- momentum * c + (1 - momentum) * m`` (the first time a class
    is seen, ``c <- m``); centres are L2-normalised when read. This gives centres for
    classes with one sample per batch (e.g. Stanford Online Products) and for classes
    absent from the batch (``target_pool="all"`` in the augmenters).

    State lives in buffers, so it follows ``.to()`` and is saved in ``state_dict``:
    ``centers`` (num_classes, embedding_size) float32 running averages and
    ``num_updates`` (num_classes,) how often each class was updated.

    Args:
        num_classes: labels must lie in ``[0, num_classes)``.
        embedding_size: dimension of the embeddings.
        momentum: weight of the old centre in each update, in [0, 1).
        min_samples: the fewest samples of a class in a batch for it to update its
            centre.
        update: update the centres on each forward in training mode (after
            ``.eval()`` they are only read); False freezes them.
        sync_distributed: under torch.distributed, all-reduce the per-class sums and
            counts of each batch before updating, so every rank holds identical
            buffers (bit for bit) after each step, whether the loss sees its rank's
            batch or, under PML's ``DistributedLossWrapper``, the gathered batch (then
            the sums and counts are a multiple of one rank's, and the means the same).
        collect_stats: record ``num_centers`` and ``num_batch_classes`` (default:
            PML's ``COLLECT_STATS``).
    """

    remembers_classes = True

    @checked_keywords
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        momentum: float = 0.9,
        min_samples: int = 1,
        update: bool = True,
        sync_distributed: bool = True,
        *,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(min_samples=min_samples, collect_stats=collect_stats)
        num_classes, embedding_size = check_sizes(num_classes, embedding_size)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.momentum = float(momentum)
        self.update = update
        self.sync_distributed = sync_distributed
        self.register_buffer("centers", torch.zeros(num_classes, embedding_size))
        self.register_buffer("num_updates", torch.zeros(num_classes, dtype=torch.long))
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size", "momentum"], is_stat=False
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "centers"
        if key in state_dict and state_dict[key].shape != self.centers.shape:
            raise ValueError(
                f"cannot load class centres of shape {tuple(state_dict[key].shape)} "
                f"(num_classes, embedding_size) into {type(self).__name__} with "
                f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def batch_statistics(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-class sums and counts of the batch, for the classes present in it.

        Returns (class labels (K,), sums (K, D), counts (K,)); with
        ``sync_distributed`` under torch.distributed, summed over all ranks.
        """
        unique_labels, _, sums, counts = class_sums(embeddings, labels)
        sums = sums.to(self.centers.dtype)
        if self.sync_distributed and distributed.is_distributed():
            all_sums = torch.zeros_like(self.centers)
            all_sums[unique_labels] = sums
            all_counts = torch.zeros_like(self.num_updates)
            all_counts[unique_labels] = counts
            distributed.all_reduce_sum(all_sums, all_counts)
            present = (all_counts > 0).nonzero().squeeze(1)
            return present, all_sums[present], all_counts[present]
        return unique_labels, sums, counts

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        check_table(self, self.centers, embeddings, labels)

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        include_absent: bool = True,
    ) -> ClassCenters:
        labels = labels.long()
        # an evaluation (eval mode, or no gradients) leaves the centres as they are
        if not (self.update and self.training and self.grad_enabled):
            if not bool((self.num_updates > 0).any()):
                raise ValueError(
                    f"{type(self).__name__} knows no centre and does not update "
                    f"(update={self.update}, training={self.training}, gradients "
                    f"{'on' if self.grad_enabled else 'off'}): load a "
                    "state_dict with its centres, or let it update in training mode"
                )
        else:
            batch_labels, sums, counts = self.batch_statistics(embeddings, labels)
            means, nonzero = normalize_rows(sums)
            updated = nonzero & (counts >= self.min_samples)
            batch_labels_updated = batch_labels[updated]
            old = self.centers[batch_labels_updated]
            seen = (self.num_updates[batch_labels_updated] > 0).unsqueeze(1)
            new = means[updated]
            blended = torch.where(
                seen, self.momentum * old + (1 - self.momentum) * new, new
            )
            self.centers[batch_labels_updated] = blended
            self.num_updates[batch_labels_updated] += 1
        known = self.num_updates > 0
        return centers_from_table(self.centers, known, labels, include_absent)
