import warnings

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from ..utils import distributed
from ..utils.checks import as_count, check_batch, check_directions


class CheckedLoss:
    """What pml-sft adds around the forward of the upstream
    :class:`pml_sft.upstream.sft_loss.SFTLoss` (a mixin placed before it). The
    plugin's classes also list ``BaseMetricLossFunction`` last among their bases,
    so that the ``DistributedLossWrapper`` of a released PML accepts them (the
    pull request makes it accept ``SFTLoss``); its distance and reducer are
    removed (:func:`finish_plugin_init`), as the wrapped loss's apply. It adds: the
    inputs checked once, at the entry (shapes, dtypes, labels, NaN/inf, zero rows,
    ``indices_tuple``), so that a bad batch fails at the first call and not when
    augmentation starts; a zero loss for an empty batch; and a ``FloatingPointError``
    instead of a silent non-finite loss from finite inputs."""

    def forward(
        self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        self.check_inputs(embeddings, labels, indices_tuple)
        if embeddings.shape[0] == 0:  # no samples, no loss (some PML losses give NaN)
            self.reset_stats()
            # an iteration all the same; under torch.distributed the other ranks'
            # draws may wait for this one (keyed seeds, synced centres)
            if self.next_weight() > 0 and distributed.is_distributed():
                self.augment(embeddings, c_f.to_device(labels, embeddings))
            return embeddings.sum() * 0.0
        labels = c_f.to_device(labels, embeddings).long()  # any integer dtype
        loss = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        self.watch_for_no_op()
        return self.checked(loss)

    idle_calls = 0  # augmenting calls in a row that augmented nothing
    IDLE_WARNING_AFTER = 10

    def watch_for_no_op(self):
        """Warn once when the schedule augments but the augmenter made nothing in
        ``IDLE_WARNING_AFTER`` calls in a row (a silent no-op otherwise)."""
        if not self.current_aug_weight > 0:
            return
        self.idle_calls = 0 if self.num_augmented else self.idle_calls + 1
        if self.idle_calls == self.IDLE_WARNING_AFTER:
            warnings.warn(
                f"{type(self).__name__} has augmented nothing in the last "
                f"{self.IDLE_WARNING_AFTER} calls although its schedule augments: no "
                "class of these batches had the samples the augmenter needs (for "
                "SFT, translation, Embedding Expansion and Symmetrical Synthesis: at "
                "least two samples of a class). Sample batches with "
                "pytorch_metric_learning.samplers.MPerClassSampler(labels, m=4) (or "
                "any m >= 2)"
            )

    def check_inputs(self, embeddings, labels, indices_tuple=None):
        """The one check of a call (one host sync for the rows' values)."""
        check_batch(embeddings, labels)
        check_directions(embeddings, "embeddings")
        if indices_tuple is not None:
            check_indices_tuple(indices_tuple, embeddings.shape[0])

    def checked(self, loss):
        """The loss, unless it is NaN or inf: then a clear error."""
        if torch.is_tensor(loss) and not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(
                f"{type(self.loss).__name__} returned a non-finite loss ({loss.detach()}) "
                "for finite embeddings"
            )
        return loss


def check_indices_tuple(indices_tuple, n):
    """An indices_tuple (pairs or triplets) of index tensors into the n rows."""
    if not (isinstance(indices_tuple, (tuple, list)) and len(indices_tuple) in (3, 4)):
        raise ValueError(
            "indices_tuple must be a tuple of 3 (triplets) or 4 (pairs) index tensors"
        )
    for i, t in enumerate(indices_tuple):
        if not torch.is_tensor(t) or t.dim() != 1 or t.dtype.is_floating_point:
            raise ValueError(f"indices_tuple[{i}] must be a 1-D integer tensor")
    lengths = [len(t) for t in indices_tuple]
    if lengths[0] != lengths[1] or lengths[-2] != lengths[-1]:
        raise ValueError(f"indices_tuple's tensors differ in length: {lengths}")
    filled = [(i, t) for i, t in enumerate(indices_tuple) if t.numel() > 0]
    if not filled:
        return
    bounds = torch.stack([torch.stack([t.min(), t.max()]) for _, t in filled])
    for (i, _), (lo, hi) in zip(filled, bounds.tolist()):
        if lo < 0 or hi >= n:
            raise ValueError(
                f"indices_tuple[{i}] holds indices from {lo} to {hi}, outside the "
                f"batch of {n} rows"
            )


def finish_plugin_init(wrapper):
    """Finish a plugin wrapper's construction: remove the distance and reducer that
    ``BaseMetricLossFunction`` builds (the wrapped loss's apply), and record
    ``num_augmented`` and ``current_aug_weight`` at every call, with or without
    ``collect_stats`` (record-keeper logs them): they answer a user's first
    question, whether anything is augmented."""
    del wrapper.distance, wrapper.reducer
    wrapper.add_to_recordable_attributes(
        list_of_names=["num_augmented", "current_aug_weight"], is_stat=False
    )


def plugin_options(loss, num_targets, *schedule):
    """A built loss, and the counts as Python ints (numpy integers and 0-d tensors
    too): what the upstream class, which takes plain ints, is given."""
    if isinstance(loss, type) or not isinstance(loss, torch.nn.Module):
        raise TypeError(
            f"loss must be a built loss (e.g. ContrastiveLoss()), got {loss!r}"
        )
    counts = [as_count(num_targets, "num_targets")]
    names = ("total_iterations", "warmup_iterations", "ramp_iterations")
    for name, value in zip(names, schedule):
        counts.append(None if value is None else as_count(value, name, minimum=0))
    return counts
