import math

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from ..upstream.sft_loss import compute_dtype
from ..utils.checks import check_batch, check_finite


class BaseAugmenter(ModuleWithRecords):
    """The interface of every pml-sft augmenter. Called like a PML miner,
    ``augmenter(embeddings, labels)`` checks its inputs and returns
    ``(aug_embeddings, aug_labels, source_indices)``: the new samples, their labels,
    and for each the row of ``embeddings`` it was made from. Subclasses define
    :meth:`augment`, which the loss wrappers call on inputs they have checked.
    ``num_targets`` is the number of new samples per source and target class that
    the wrappers record (1 unless a subclass says otherwise)."""

    num_targets = 1

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(name="num_augmented", is_stat=True)

    def forward(self, embeddings, labels):
        check_batch(embeddings, labels)  # the rows' values: when directions reads them
        return self.augment(embeddings, c_f.to_device(labels, embeddings))

    def augment(self, embeddings, labels):
        raise NotImplementedError

    @staticmethod
    def directions(embeddings, name):
        """Unit directions and norms of the rows, in the compute dtype (float32 for
        half precision), differentiable. Rows with NaN/inf, zero rows and rows whose
        norm overflows are refused (one host sync)."""
        x = embeddings.to(compute_dtype(embeddings.dtype))
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        if x.shape[0] > 0:
            smallest, largest = torch.stack(torch.aminmax(norms.detach())).tolist()
            if not math.isfinite(smallest + largest):
                check_finite(embeddings, name)
                raise ValueError(
                    f"{name} contains a vector too large to normalise in "
                    f"{x.dtype} (its norm overflows)"
                )
            if not smallest > torch.finfo(x.dtype).tiny ** 0.5:
                # squares of such small entries underflow: normalise scaled rows
                scale = x.detach().abs().amax(dim=1, keepdim=True)
                if not bool((scale > 0).all()):
                    raise ValueError(
                        f"{name} contains a zero vector, which has no direction and "
                        "cannot be L2-normalised"
                    )
                scaled_norms = torch.linalg.vector_norm(x / scale, dim=1, keepdim=True)
                return x / scale / scaled_norms, scaled_norms * scale
        return x / norms, norms


def same_class_pairs(labels):
    """(first, second) rows of every unordered pair of distinct rows with the same
    label, first < second, in row order."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    first, second = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    return first, second
