import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from ..upstream.sft_loss import _compute_dtype, _unit
from ..utils.checks import check_batch, check_directions


class BaseAugmenter(ModuleWithRecords):
    """The interface of every pml-sft augmenter. Called like a PML miner,
    ``augmenter(embeddings, labels)`` checks its inputs and returns
    ``(aug_embeddings, aug_labels, source_indices)``: the new samples, their labels,
    and for each the row of ``embeddings`` it was made from. Subclasses define
    :meth:`augment`, which the loss wrappers call on inputs they have checked.
    ``num_targets`` is the number of new samples per source and target class that
    the wrappers record (1 unless a subclass says otherwise)."""

    num_targets = 1
    # losses whose training signal the augmenter cannot change: name -> why
    unsupported_losses = {}
    needs_proxies = False  # (Proxy Synthesis: only through ProxySynthesisLoss)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(name="num_augmented", is_stat=True)

    def forward(self, embeddings, labels):
        """Checks its inputs (the only check: :meth:`augment` trusts them)."""
        check_batch(embeddings, labels)
        check_directions(embeddings, "embeddings")
        labels = c_f.to_device(labels, embeddings)
        self.check_inputs(embeddings, labels)
        return self.augment(embeddings, labels)

    def check_inputs(self, embeddings, labels):
        """What this augmenter needs of a batch beyond its shape (labels within its
        tables, the embedding size, the device of its state), checked by the public
        entries (its forward, the wrappers) at every call."""

    def augment(self, embeddings, labels):
        raise NotImplementedError

    @staticmethod
    def directions(embeddings):
        """Unit directions and norms (N, 1) of the rows, in the compute dtype
        (float32 for half precision), differentiable."""
        return _unit(embeddings.to(_compute_dtype(embeddings.dtype)))


def same_class_pairs(labels):
    """(first, second) rows of every unordered pair of distinct rows with the same
    label, first < second, in row order."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    first, second = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    return first, second
