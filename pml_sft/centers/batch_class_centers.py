from typing import Optional

import torch

from ..upstream.sft_loss import _batch_class_centers as batch_class_centers
from ..utils import distributed
from ..utils.checks import checked_keywords
from .base_class_centers import BaseClassCenters
from .class_centers import ClassCenters


class BatchClassCenters(BaseClassCenters):
    """Class centres from the current batch: the L2-normalised mean of each class's
    embeddings.

    Needs several samples per class in each batch (e.g. PML's ``MPerClassSampler``):
    a class with fewer than ``min_samples`` samples (default 2) gets no centre, so its
    samples are neither transformed nor used as targets. With one sample the "centre"
    is the sample itself and the rotation would map the sample exactly onto the other
    class's centre. A class whose mean is the zero vector also gets no centre. The
    only estimator that can pass gradients through its centres
    (``detach_centers=False`` in the augmenters).

    Args:
        min_samples: the fewest samples of a class in the batch for it to get a centre.
        sync_distributed: under torch.distributed, estimate centres from the batches
            of all ranks (gathered, without gradient), so every rank holds the same
            centres. Use it when the loss sees only its rank's batch; leave it off
            under PML's ``DistributedLossWrapper``, whose loss already sees the
            gathered batch (gathering again would count every sample once per rank).
        collect_stats: record ``num_centers`` and ``num_batch_classes`` (default:
            PML's ``COLLECT_STATS``).
    """

    differentiable = True

    @checked_keywords
    def __init__(
        self,
        min_samples: int = 2,
        sync_distributed: bool = False,
        *,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(min_samples=min_samples, collect_stats=collect_stats)
        self.sync_distributed = sync_distributed
        self.add_to_recordable_attributes(name="sync_distributed", is_stat=False)

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        include_absent: bool = True,
    ) -> ClassCenters:
        own = None
        if self.sync_distributed and distributed.is_distributed():
            embeddings, own = distributed.all_gather_rows(embeddings)
            labels, _ = distributed.all_gather_rows(labels)
        center_labels, centers, sample_rows = batch_class_centers(
            embeddings, labels, self.min_samples
        )
        result = ClassCenters(
            labels=center_labels,
            centers=centers,
            in_batch=torch.ones_like(center_labels, dtype=torch.bool),
            sample_rows=sample_rows,
        )
        if own is not None:
            result.sample_rows = result.sample_rows[own]
        return result
