import torch

from ..utils import distributed
from .base_class_centers import BaseClassCenters
from .class_centers import ClassCenters


class BatchClassCenters(BaseClassCenters):
    """Class centres from the current batch: the L2-normalised mean of each class's
    embeddings.

    Needs several samples per class in each batch (e.g. PML's ``MPerClassSampler``):
    a class with fewer than ``min_samples`` samples (default 2) gets no centre, so its
    samples are neither transformed nor used as targets. With one sample the "centre"
    is the sample itself and the rotation would map the sample exactly onto the other
    class's centre. A class whose mean is the zero vector also gets no centre.

    Args:
        min_samples: the fewest samples of a class in the batch for it to get a centre.
        sync_distributed: under torch.distributed, estimate centres from the batches
            of all ranks (gathered), so every rank holds the same centres. Use it when
            the loss sees only its rank's batch; leave it off under PML's
            ``DistributedLossWrapper``, whose loss already sees the gathered batch
            (gathering again would count every sample once per rank).
    """

    def __init__(self, min_samples=2, sync_distributed=False, **kwargs):
        super().__init__(min_samples=min_samples, **kwargs)
        self.sync_distributed = sync_distributed

    def compute(self, embeddings, labels, include_absent=True):
        if self.sync_distributed and distributed.is_distributed():
            all_embeddings, own = distributed.all_gather_rows(embeddings)
            all_labels, _ = distributed.all_gather_rows(labels)
            result = self.compute_local(all_embeddings, all_labels)
            result.sample_rows = result.sample_rows[own]
            return result
        return self.compute_local(embeddings, labels)

    def compute_local(self, embeddings, labels):
        unique_labels, inverse, sums, counts = self.batch_class_sums(embeddings, labels)
        centers, nonzero = self.normalize_rows(sums)
        valid = nonzero & (counts >= self.min_samples)
        if bool(valid.all()):  # the usual case: no renumbering needed
            return ClassCenters(
                labels=unique_labels,
                centers=centers,
                in_batch=valid,
                sample_rows=inverse,
                dense=True,
            )
        rows = valid.nonzero().squeeze(1)
        new_row = torch.full_like(counts, -1)
        new_row[rows] = torch.arange(rows.shape[0], device=rows.device)
        return ClassCenters(
            labels=unique_labels[rows],
            centers=centers[rows],
            in_batch=torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device),
            sample_rows=new_row[inverse],
        )
