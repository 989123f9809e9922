import contextlib
from typing import Dict, Iterator, Optional, Tuple

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from ..upstream.sft_loss import _compute_dtype, _unit
from ..utils.checks import check_batch, check_directions, checked_keywords
from ..utils.records import StatsOnDemand
from ..utils.target_sampling import generator_state, load_generator_state


class BaseAugmenter(StatsOnDemand):
    """The interface of every pml-sft augmenter. Called like a PML miner,
    ``augmenter(embeddings, labels)`` checks its inputs and returns
    ``(aug_embeddings, aug_labels, source_indices)``: the new samples, their labels,
    and for each the row of ``embeddings`` it was made from. Subclasses define
    :meth:`augment`, which the loss wrappers call on inputs they have checked.
    ``num_targets`` is the number of new samples per source and target class that
    the wrappers record (1 unless a subclass says otherwise).

    Args:
        collect_stats: compute the subclass's statistics (default: PML's
            ``COLLECT_STATS``).
    """

    num_targets = 1
    # losses whose training signal the augmenter cannot change: name -> why
    unsupported_losses: Dict[str, str] = {}
    needs_proxies = False  # (Proxy Synthesis: only through ProxySynthesisLoss)
    # (the wrapper that alone can train its rows, why), or None: any wrapper
    needs_own_wrapper: Optional[Tuple[str, str]] = None

    @checked_keywords
    def __init__(self, *, collect_stats: Optional[bool] = None):
        super().__init__(collect_stats=collect_stats)
        self.add_to_recordable_attributes(name="num_augmented", is_stat=True)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Checks its inputs (the only check: :meth:`augment` trusts them).

        Args:
            embeddings: (N, D) embeddings to augment.
            labels: (N,) integer labels (moved to the embeddings' device).

        Returns:
            aug_embeddings (M, D), aug_labels (M,), source_indices (M,).
        """
        check_batch(embeddings, labels)
        check_directions(embeddings, "embeddings")
        labels = c_f.to_device(labels, embeddings)
        # augment indexes with the labels: int64 (uint8 would index as a mask)
        long_labels = labels.long()
        self.check_inputs(embeddings, long_labels)
        aug, aug_labels, sources = self.augment(embeddings, long_labels)
        return aug, aug_labels.to(labels.dtype), sources

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """What this augmenter needs of a batch beyond its shape (labels within its
        tables, the embedding size, the device of its state), checked by the public
        entries (its forward, the wrappers) at every call."""

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` for inputs already checked (labels on the embeddings'
        device), as the loss wrappers call it."""
        raise NotImplementedError

    @staticmethod
    def directions(embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Unit directions and norms (N, 1) of the rows, in the compute dtype
        (float32 for half precision), differentiable."""
        return _unit(embeddings.to(_compute_dtype(embeddings.dtype)))


class GeneratorState:
    """For an augmenter with a ``generator`` (None: torch's global RNG): its state
    in the module's ``state_dict``, so a resumed run draws the same, and
    :meth:`evaluation_keeps_generator` around its draws, so an evaluation (eval
    mode or no_grad) leaves the generator as it was."""

    generator: Optional[torch.Generator]
    training: bool

    def get_extra_state(self) -> Dict[str, Optional[torch.Tensor]]:
        """The generator's state, so that a resumed run draws the same."""
        return generator_state(self.generator)

    def set_extra_state(self, state: Dict[str, Optional[torch.Tensor]]) -> None:
        load_generator_state(self.generator, state, type(self).__name__)

    @contextlib.contextmanager
    def evaluation_keeps_generator(self) -> Iterator[None]:
        """Draws inside leave ``generator`` as it was unless training (train mode
        with gradients on); without a generator, torch's global RNG advances, as
        any torch random call does."""
        saved = None
        if self.generator is not None and not (
            self.training and torch.is_grad_enabled()
        ):
            saved = self.generator.get_state()
        try:
            yield
        finally:
            if saved is not None:
                self.generator.set_state(saved)


def same_class_pairs(labels):
    """(first, second) rows of every unordered pair of distinct rows with the same
    label, first < second, in row order."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    first, second = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    return first, second
