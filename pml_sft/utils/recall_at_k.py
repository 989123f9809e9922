import functools
import inspect
from typing import Any, List, Sequence, Tuple, Union

import torch
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    maybe_get_avg_of_avgs,
    nan_accuracy,
    try_getting_not_lone_labels,
)


class RecallAtK(AccuracyCalculator):
    """PML ``AccuracyCalculator`` that also reports Recall@K, the metric of the
    deep-metric-learning literature: the fraction of queries whose K nearest
    neighbours contain at least one sample of the query's class.

    Adds ``recall_at_{K}`` for every K in ``recall_ks`` (default 1, 2, 4, 8) to PML's
    metrics (precision_at_1, r_precision, mean_average_precision_at_r, NMI, AMI, ...).
    Queries whose class has no other sample in the reference set are left out, as
    PML does for precision_at_1. The number of neighbours retrieved is at least the
    largest K, and by default (``k="max_bin_count"``) also enough for MAP@R.

    Args:
        recall_ks: the K values.
        k: neighbours retrieved, as for ``AccuracyCalculator`` (raised to
            ``max(recall_ks)`` where fewer).
        **kwargs: the other ``AccuracyCalculator`` options (include, exclude,
            knn_func, ...).
    """

    def __init__(
        self,
        recall_ks: Sequence[int] = (1, 2, 4, 8),
        k: Union[int, str, None] = "max_bin_count",
        **kwargs: Any,
    ):
        options = ["recall_ks", *inspect.signature(AccuracyCalculator).parameters]
        for name in kwargs:  # (named against this class, not AccuracyCalculator)
            if name not in options:
                from .checks import unexpected_keyword

                raise unexpected_keyword(type(self), name, options)
        recall_ks = tuple(recall_ks)
        if not recall_ks or not all(isinstance(x, int) and x >= 1 for x in recall_ks):
            raise ValueError(f"recall_ks must be positive ints, got {recall_ks!r}")
        self.recall_ks = tuple(sorted(set(recall_ks)))
        for recall_k in self.recall_ks:
            setattr(
                self,
                f"calculate_recall_at_{recall_k}",
                functools.partial(self.recall_at_k, recall_k=recall_k),
            )
        super().__init__(k=k, **kwargs)

    def requires_knn(self) -> List[str]:
        return super().requires_knn() + [f"recall_at_{k}" for k in self.recall_ks]

    def determine_k(
        self,
        bin_counts: torch.Tensor,
        num_reference_embeddings: int,
        ref_includes_query: bool,
    ) -> int:
        k = super().determine_k(
            bin_counts, num_reference_embeddings, ref_includes_query
        )
        available = num_reference_embeddings - int(ref_includes_query)
        return min(max(k, max(self.recall_ks)), available)

    def recall_at_k(
        self,
        knn_labels: torch.Tensor,
        query_labels: torch.Tensor,
        not_lone_query_mask: torch.Tensor,
        label_counts: Tuple[torch.Tensor, torch.Tensor],
        recall_k: int,
        **kwargs: Any,
    ) -> Union[float, List[float]]:
        """The share of queries with a sample of their class among their
        ``recall_k`` nearest neighbours (per class with ``return_per_class``)."""
        knn_labels, query_labels = try_getting_not_lone_labels(
            knn_labels, query_labels, not_lone_query_mask
        )
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        hits = self.label_comparison_fn(query_labels[:, None], knn_labels[:, :recall_k])
        accuracy_per_sample = hits.any(dim=1).to(torch.float64)
        return maybe_get_avg_of_avgs(
            accuracy_per_sample,
            query_labels[:, None],
            self.avg_of_avgs,
            self.return_per_class,
        )
