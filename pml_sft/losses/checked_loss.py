import warnings
from typing import Iterator, Optional, Tuple

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import common_functions as c_f

from ..upstream.sft_loss import UNSUPPORTED_LOSSES
from ..utils import distributed
from ..utils.checks import as_count, check_batch, check_directions

# options of pml-sft 0.1's wrappers that moved, and where to (checked_keywords)
MOVED = {
    "aug_weight": "pml_sft.contrib.AblationLoss",
    "objective": "pml_sft.contrib.AblationLoss",
    "synthetic_role": "pml_sft.contrib.AblationLoss",
    "nearest_targets": "pml_sft.contrib.AblationSphericalFeatureTransform",
    "strength": "pml_sft.contrib.AblationSphericalFeatureTransform",
    "consistent_only": "pml_sft.contrib.AblationSphericalFeatureTransform",
    "normalize_embeddings": "pml_sft.contrib.AblationSphericalFeatureTransform",
    "detach_centers": "pml_sft.contrib.AblationSphericalFeatureTransform",
    "detach_augmented": "pml_sft.contrib.AblationSphericalFeatureTransform",
    "centers": "the augmenter: FeatureTransformLoss(loss, "
    "SphericalFeatureTransform(centers=...))",
    "target_pool": "the augmenter: FeatureTransformLoss(loss, "
    "SphericalFeatureTransform(target_pool=...))",
    "start": "the schedule: total_iterations or warmup_iterations",
    "reducer": "the wrapped loss (its reducer applies)",
    "distance": "the wrapped loss (its distance applies)",
    "embedding_regularizer": "the wrapped loss",
}


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
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: Optional[Tuple[torch.Tensor, ...]] = None,
        ref_emb: None = None,
        ref_labels: None = None,
    ) -> torch.Tensor:
        """The wrapped loss on the batch enlarged by the synthetic samples (mixed
        with the plain loss during the ramp); ``ref_emb``/``ref_labels`` are not
        taken: synthetic samples join the batch itself."""
        self.check_inputs(embeddings, labels, indices_tuple)
        if embeddings.shape[0] == 0:  # no samples, no loss (some PML losses give NaN)
            self.reset_stats()
            # an iteration all the same; under torch.distributed the other ranks'
            # draws may wait for this one (keyed seeds, synced centres)
            self.current_aug_weight, self.num_augmented = self.next_weight(), 0
            if self.current_aug_weight > 0 and distributed.is_distributed():
                self.augment(embeddings, c_f.to_device(labels, embeddings))
            self.no_measurement()
            return embeddings.sum() * 0.0
        labels = c_f.to_device(labels, embeddings).long()  # any integer dtype
        loss = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if not self.num_augmented:
            self.no_measurement()
        self.watch(len(embeddings))
        return self.checked(loss)

    def no_measurement(self):
        """Statistics of the synthetic samples are NaN when there are none (a zero
        would read as a measurement)."""
        for name in ("mean_center_angle", "share_nearest_target"):
            if name in getattr(self, "_record_these_stats", ()):
                setattr(self, name, float("nan"))

    WINDOW = 20  # augmenting calls the no-op watch looks at
    IDLE_RUN = 10  # ... and idle calls in a row that warn at once
    warned = False

    def watch(self, batch_size):
        """Warn once (per wrapper) when the schedule augments but the last
        ``IDLE_RUN`` augmenting calls augmented nothing, or, over the last
        ``WINDOW``, half of the calls augmented nothing or (for the per-sample
        transforms) fewer than a quarter of the samples were moved; and once when
        the calls outrun ``total_iterations``."""
        total = getattr(self, "total_iterations", None)
        if total is not None and self.step == total + 1 and self.current_aug_weight:
            warnings.warn(
                f"{type(self).__name__} was called more than total_iterations="
                f"{total} times in training: give the length of training in "
                "iterations (pml_sft.training_iterations), not in epochs"
            )
        if self.warned or not self.current_aug_weight > 0:
            return
        share = None
        if self.per_sample:
            share = self.num_augmented / (batch_size * self.num_targets)
        recent = getattr(self, "recent", [])[-(self.WINDOW - 1) :]
        self.recent = recent = recent + [(self.num_augmented > 0, share)]
        last = recent[-self.IDLE_RUN :]
        if len(last) == self.IDLE_RUN and not any(augmented for augmented, _ in last):
            what = f"augmented nothing in its last {self.IDLE_RUN} calls"
        elif len(recent) == self.WINDOW:
            idle = sum(not augmented for augmented, _ in recent)
            shares = [s for _, s in recent if s is not None]
            mean = sum(shares) / len(shares) if shares else 1.0
            if idle * 2 >= self.WINDOW:
                what = f"augmented nothing in {idle} of its last {self.WINDOW} calls"
            elif mean < 0.25:
                what = (
                    f"moved {100 * mean:.0f} % of the samples in its last "
                    f"{self.WINDOW} calls"
                )
            else:
                return
        else:
            return
        self.warned = True
        warnings.warn(
            f"{type(self).__name__} {what} although its schedule augments: "
            f"{self.needs} Sample batches with "
            "pytorch_metric_learning.samplers.MPerClassSampler(labels, m=4) (or "
            "any m >= 2)"
        )

    per_sample = True  # num_augmented counts num_targets copies per moved sample
    needs = (
        "SFT and translation move a sample only when its class and at least one "
        "other class each have two or more samples in the batch."
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


def finish_plugin_init(wrapper, total_iterations):
    """Finish a plugin wrapper's construction: remove the distance and reducer that
    ``BaseMetricLossFunction`` builds (the wrapped loss's apply), and record
    ``num_augmented`` and ``current_aug_weight`` at every call, with or without
    ``collect_stats`` (record-keeper logs them): they answer a user's first
    question, whether anything is augmented."""
    del wrapper.distance, wrapper.reducer
    wrapper.total_iterations = total_iterations
    wrapper.add_to_recordable_attributes(
        list_of_names=["num_augmented", "current_aug_weight"], is_stat=False
    )


def plugin_options(wrapper, loss, miner, num_targets, *schedule):
    """Checks what a plugin wrapper is built with (a built, supported loss, or a
    subclass of one; a built miner; a schedule that starts) and
    returns the counts as Python ints (numpy integers and 0-d tensors too): what
    the upstream class, which takes plain ints, is given."""
    if isinstance(loss, type) or not isinstance(loss, torch.nn.Module):
        raise TypeError(
            f"loss must be a built loss (e.g. ContrastiveLoss()), got {loss!r}"
        )
    check_loss_class(wrapper, loss)
    if miner is not None and not isinstance(miner, BaseMiner):
        got = (
            f"the class {miner.__name__}: build it, {miner.__name__}()"
            if isinstance(miner, type)
            else f"{type(miner).__name__} {miner!r}"[:80]
        )
        raise TypeError(
            f"miner must be a built PML miner (e.g. MultiSimilarityMiner()) or None, "
            f"got {got}"
        )
    counts = [as_count(num_targets, "num_targets")]
    names = ("total_iterations", "warmup_iterations", "ramp_iterations")
    for name, value in zip(names, schedule):
        counts.append(None if value is None else as_count(value, name, minimum=0))
    total, warmup = counts[1], counts[2]
    if total is not None and warmup is not None and warmup >= total:
        raise ValueError(
            f"warmup_iterations={warmup} is not below total_iterations={total}: "
            "augmentation would never start"
        )
    return counts


def inner_losses(loss: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``loss`` and, for PML's ``MultipleLosses``, every loss it combines (at any
    depth): the losses the batch reaches, which the refusals check one by one."""
    yield loss
    if type(loss).__name__ == "MultipleLosses":
        losses = loss.losses
        for inner in losses.values() if hasattr(losses, "values") else losses:
            yield from inner_losses(inner)


def check_loss_class(wrapper, loss):
    """The class of the loss, and of every loss a ``MultipleLosses`` combines,
    must be one the wrapper was tested with, by name (PML's contract for loss
    wrappers): a subclass may change what the loss does with the batch. The
    refusal says how to try another loss anyway."""
    for inner in inner_losses(loss):
        check_one_loss_class(wrapper, inner)


def check_one_loss_class(wrapper, loss):
    name = type(loss).__name__
    if name in wrapper.supported_losses():
        return
    reason = UNSUPPORTED_LOSSES.get(name)
    if reason is None:
        base = next(
            (
                c.__name__
                for c in type(loss).__mro__
                if c.__name__ in wrapper.supported_losses()
            ),
            None,
        )
        reason = "it is not a tested loss" + (
            f" (it derives from {base}, which is)" if base else ""
        )
        reason += (
            f". To try it anyway, subclass {wrapper.__name__} and add "
            f"{name!r} to its supported_losses()"
        )
    raise ValueError(f"{wrapper.__name__} cannot wrap {name}: {reason}")
