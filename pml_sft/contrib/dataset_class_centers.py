import torch

from ..centers.base_class_centers import (
    BaseClassCenters,
    centers_from_table,
    check_labels_in_range,
    check_sizes,
    check_table,
    class_sums,
    normalize_rows,
)
from ..utils.checks import check_embeddings, check_finite, check_labels


class DatasetClassCenters(BaseClassCenters):
    """Class centres from a full pass over the training set, refreshed by the
    training loop (IAA, Fu et al., refreshes class statistics every two epochs).

    Call :meth:`fit` with the embeddings of the whole training set (e.g. at the start
    of every epoch or two); between calls the centres stay fixed. Each centre is the
    L2-normalised mean of the class's L2-normalised embeddings. Classes never fitted
    have no centre. The buffers ``centers`` (num_classes, embedding_size) float32 and
    ``fitted`` (num_classes,) follow ``.to()`` and ``state_dict``.

    Args:
        num_classes: labels must lie in ``[0, num_classes)``.
        embedding_size: dimension of the embeddings.
        min_samples: the fewest samples of a class in the pass for it to get a centre.
    """

    remembers_classes = True

    def __init__(self, num_classes, embedding_size, min_samples=1, **kwargs):
        super().__init__(min_samples=min_samples, **kwargs)
        num_classes, embedding_size = check_sizes(num_classes, embedding_size)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.register_buffer("centers", torch.zeros(num_classes, embedding_size))
        self.register_buffer("fitted", torch.zeros(num_classes, dtype=torch.bool))
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size"], is_stat=False
        )

    @torch.no_grad()
    def fit(self, embeddings, labels):
        """Replace every centre by the class mean of ``embeddings`` (N, D), a pass
        over the training set; classes absent from it lose their centre."""
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        check_finite(embeddings, "embeddings")
        self.check_size(embeddings)
        labels = labels.to(self.centers.device).long()
        check_labels_in_range(labels, self.num_classes, type(self).__name__)
        unit = torch.nn.functional.normalize(
            embeddings.to(self.centers.device, torch.float32), dim=1
        )
        unique_labels, _, sums, counts = class_sums(unit, labels)
        means, nonzero = normalize_rows(sums)
        valid = nonzero & (counts >= self.min_samples)
        self.centers.zero_()
        self.fitted.zero_()
        self.centers[unique_labels[valid]] = means[valid]
        self.fitted[unique_labels[valid]] = True

    def check_size(self, embeddings):
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have size {embeddings.shape[1]} but {type(self).__name__} "
                f"was built with embedding_size={self.embedding_size}"
            )

    def check_inputs(self, embeddings, labels):
        check_table(self, self.centers, embeddings, labels)

    def compute(self, embeddings, labels, include_absent=True):
        if not bool(self.fitted.any()):
            raise ValueError(
                f"{type(self).__name__} has no centres yet: call fit(embeddings, "
                "labels) with a pass over the training set first"
            )
        return centers_from_table(
            self.centers, self.fitted, labels.long(), include_absent
        )
