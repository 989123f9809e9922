import torch
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from ..utils.checks import check_embeddings, check_finite, check_labels


def accumulation_dtype(dtype):
    """Sums of float16/bfloat16 embeddings are accumulated in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class BaseClassCenters(ModuleWithRecords):
    """Estimates one unit centre per class from (normalised) embeddings.

    Subclasses implement :meth:`compute` and return a
    :class:`~pml_sft.centers.ClassCenters`. Centres are always computed without
    gradient: they are targets of the transform, not something to train.
    """

    def __init__(self, min_samples=1, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(min_samples, int) and min_samples >= 1):
            raise ValueError(f"min_samples must be an int >= 1, got {min_samples!r}")
        self.min_samples = min_samples
        self.add_to_recordable_attributes(name="min_samples", is_stat=False)
        self.add_to_recordable_attributes(
            list_of_names=["num_centers", "num_batch_classes"], is_stat=True
        )

    def forward(self, embeddings, labels, include_absent=True, validate=True):
        """Args:
        embeddings: (N, D) embeddings, already L2-normalised by the caller if the
            centres should be spherical (the augmenters do this).
        labels: (N,) integer class labels.
        include_absent: also return known centres of classes absent from the batch
            (only estimators with memory have any); False saves work when only the
            batch's classes are needed.
        validate: check the inputs (callers that already did may skip it).
        """
        self.reset_stats()
        if validate:
            check_embeddings(embeddings)
            check_labels(labels, embeddings.shape[0], embeddings.device)
            check_finite(embeddings, "embeddings")
        with torch.no_grad():
            result = self.compute(embeddings.detach(), labels, include_absent)
        if self.collect_stats:
            self.num_centers = len(result)
            self.num_batch_classes = int(result.in_batch.sum())
        return result

    def compute(self, embeddings, labels, include_absent=True):
        raise NotImplementedError

    @staticmethod
    def batch_class_sums(embeddings, labels):
        """Per-class sums and counts of a batch, for the classes present in it.

        Returns (unique_labels (K,), inverse (N,), sums (K, D), counts (K,)); sums are
        accumulated in float32 for half-precision input.
        """
        unique_labels, inverse, counts = torch.unique(
            labels, return_inverse=True, return_counts=True
        )
        dtype = accumulation_dtype(embeddings.dtype)
        sums = torch.zeros(
            unique_labels.shape[0],
            embeddings.shape[1],
            dtype=dtype,
            device=embeddings.device,
        )
        sums.index_add_(0, inverse, embeddings.to(dtype))
        return unique_labels, inverse, sums, counts

    @staticmethod
    def normalize_rows(x):
        """L2-normalise rows; rows too short to normalise come back as zeros, with a
        False entry in the returned mask."""
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        eps = torch.finfo(x.dtype).eps
        return x / norms.clamp_min(eps), norms.squeeze(1) > eps
