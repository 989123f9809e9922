import torch
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from ..utils.checks import check_embeddings, check_finite, check_labels


def class_sums(embeddings, labels):
    """Per-class sums and counts of a batch, for the classes present in it.

    Returns (unique_labels (K,), inverse (N,), sums (K, D), counts (K,)); sums of
    float16/bfloat16 embeddings are accumulated in float32. Differentiable w.r.t.
    ``embeddings``.
    """
    unique_labels, inverse, counts = torch.unique(
        labels, return_inverse=True, return_counts=True
    )
    dtype = (
        torch.float32 if embeddings.dtype in (torch.float16, torch.bfloat16) else None
    )
    x = embeddings if dtype is None else embeddings.to(dtype)
    sums = x.new_zeros(unique_labels.shape[0], x.shape[1]).index_add(0, inverse, x)
    return unique_labels, inverse, sums, counts


def normalize_rows(x):
    """L2-normalised rows, and a mask of the rows long enough to normalise (the
    others come back as zeros)."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    eps = torch.finfo(x.dtype).eps
    return x / norms.clamp_min(eps), norms.squeeze(1) > eps


class BaseClassCenters(ModuleWithRecords):
    """Estimates one unit centre per class from L2-normalised embeddings.

    Subclasses implement :meth:`compute` and return a
    :class:`~pml_sft.centers.ClassCenters`. Centres are computed without gradient
    unless the estimator says it can pass gradients on (``differentiable``) and the
    caller asks for it.

    Args:
        min_samples: the fewest samples of a class in a batch for it to count (its
            meaning is the subclass's).
    """

    differentiable = False

    def __init__(self, min_samples=1, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(min_samples, int) and min_samples >= 1):
            raise ValueError(f"min_samples must be an int >= 1, got {min_samples!r}")
        self.min_samples = min_samples
        self.add_to_recordable_attributes(name="min_samples", is_stat=False)
        self.add_to_recordable_attributes(
            list_of_names=["num_centers", "num_batch_classes"], is_stat=True
        )

    def forward(self, embeddings, labels, include_absent=True, detach=True):
        """Args:
        embeddings: (N, D) L2-normalised embeddings.
        labels: (N,) integer class labels (on the embeddings' device).
        include_absent: also return known centres of classes absent from the batch
            (only estimators with memory have any).
        detach: compute the centres without gradient; False needs a
            ``differentiable`` estimator.
        """
        self.reset_stats()
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        check_finite(embeddings, "embeddings")
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

    def compute(self, embeddings, labels, include_absent=True):
        raise NotImplementedError
