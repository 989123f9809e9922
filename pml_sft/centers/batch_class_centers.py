import torch

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
    """

    def __init__(self, min_samples=2, **kwargs):
        super().__init__(min_samples=min_samples, **kwargs)

    def compute(self, embeddings, labels, include_absent=True):
        unique_labels, inverse, sums, counts = self.batch_class_sums(embeddings, labels)
        centers, nonzero = self.normalize_rows(sums)
        valid = nonzero & (counts >= self.min_samples)
        if bool(valid.all()):  # the usual case: no renumbering needed
            return ClassCenters(
                labels=unique_labels,
                centers=centers,
                in_batch=valid,
                sample_rows=inverse,
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
