from typing import Optional

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f

from ..augmenters import BaseAugmenter, BaseFeatureAugmenter
from ..upstream import sft_loss
from ..utils.checks import checked_keywords
from ..utils.records import StatsOnDemand
from .checked_loss import (
    MOVED,
    CheckedLoss,
    finish_plugin_init,
    inner_losses,
    plugin_options,
)

# The PML losses and miners the upstream SFTLoss refuses, and why.
UNSUPPORTED_LOSSES = sft_loss.UNSUPPORTED_LOSSES
UNSUPPORTED_MINERS = sft_loss.UNSUPPORTED_MINERS
# what an augmenter without class centres needs in a batch (the no-op warning)
NEEDS = {
    "EmbeddingExpansion": "Embedding Expansion needs a class with two or more "
    "samples in the batch.",
    "SymmetricalSynthesis": "Symmetrical Synthesis needs a class with two or more "
    "samples in the batch.",
    "DenselyAnchoredSampling": "Densely Anchored Sampling needs a class with two "
    "or more samples in the batch.",
    "EmbeddingMixup": "Embedding mixup needs two classes in the batch.",
    "ClassCovarianceSampling": "Class-covariance sampling needs two samples of a "
    "class seen (in this batch or before) to estimate its covariance.",
    "SphericalEmbeddingExpansion": "Spherical Embedding Expansion expands samples "
    "around their class proxy, or, without proxies, around the mean of a class with "
    "two or more samples in the batch.",
}


class FeatureTransformLoss(CheckedLoss, sft_loss.SFTLoss, BaseMetricLossFunction):
    """Wraps a PML loss and trains it on the batch enlarged by any pml-sft
    augmenter: the forward, schedule and tuple handling of the upstream
    :class:`pml_sft.upstream.sft_loss.SFTLoss`, with the augmenter's samples in
    place of its built-in step, and the input checks of :class:`CheckedLoss`.

    Each training call appends the augmenter's samples to the batch with their
    labels, so the inner loss, miner, reducer and distance see them as ordinary
    samples.

    Args:
        loss: the PML loss to wrap (its ``distance``/``reducer`` apply).
        augmenter: a built :class:`~pml_sft.augmenters.BaseAugmenter`, e.g.
            ``SphericalFeatureTransform(centers=MovingAverageClassCenters(...))``.
        miner: optional miner, run on the enlarged batch (see
            :class:`~pml_sft.SFTLoss` for an outer ``indices_tuple``).
        total_iterations, warmup_iterations, ramp_iterations: the schedule of
            :class:`~pml_sft.SFTLoss`; ``total_iterations`` or ``warmup_iterations``
            is required.
        collect_stats: also make the augmenter collect its statistics, copied here.
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        augmenter: BaseAugmenter,
        miner: Optional[torch.nn.Module] = None,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        collect_stats: Optional[bool] = None,
    ):
        if not isinstance(augmenter, BaseAugmenter):
            raise TypeError(
                f"augmenter must be a pml_sft augmenter, got {type(augmenter).__name__}"
            )
        own = augmenter.needs_own_wrapper
        if own is not None and type(self).__name__ != own[0]:
            raise ValueError(
                f"{type(augmenter).__name__} needs its own wrapper: use {own[0]} "
                f"({own[1]})"
            )
        if augmenter.needs_proxies and not self.gives_proxies:
            raise ValueError(
                f"{type(augmenter).__name__} mixes class proxies, which "
                f"FeatureTransformLoss does not pass it: use ProxySynthesisLoss"
            )
        for inner in inner_losses(loss):  # (each loss of a MultipleLosses too)
            reason = augmenter.unsupported_losses.get(type(inner).__name__)
            if reason is not None:
                raise ValueError(
                    f"{type(augmenter).__name__} cannot change the training signal "
                    f"of {type(inner).__name__}: {reason}"
                )
        counts = plugin_options(
            type(self),
            loss,
            miner,
            augmenter.num_targets,
            total_iterations,
            warmup_iterations,
            ramp_iterations,
        )
        super().__init__(
            loss, miner, counts[0], "rotation", *counts[1:], collect_stats=collect_stats
        )
        finish_plugin_init(self, counts[1])
        self.augmenter = augmenter
        if self.collect_stats:  # the wrapper's statistics come from the augmenter
            for module in augmenter.modules():  # (its centres too)
                if isinstance(module, StatsOnDemand):
                    module.start_collecting_stats()
        # the centre statistics, where the augmenter has centres (else none: a zero
        # on every record-keeper row would read as a measurement)
        self.center_stats = []
        self.per_sample = isinstance(augmenter, BaseFeatureAugmenter)
        if self.per_sample:
            self.center_stats = ["mean_center_angle", "share_nearest_target"]
        else:  # a method without targets records no num_targets
            self._record_these.remove("num_targets")
            self.needs = NEEDS.get(
                type(augmenter).__name__,
                f"{type(augmenter).__name__} found nothing to augment in them.",
            )
        stats = getattr(self, "_record_these_stats", [])
        for name in ("mean_center_angle", "share_nearest_target"):
            if name in self.center_stats:
                self.add_to_recordable_attributes(name=name, is_stat=True)
            elif name in stats:
                stats.remove(name)

    gives_proxies = False  # (ProxySynthesisLoss passes its loss's proxies)

    def check_inputs(self, embeddings, labels, indices_tuple=None):
        super().check_inputs(embeddings, labels, indices_tuple)
        self.augmenter.check_inputs(embeddings, c_f.to_device(labels, embeddings))

    def augment(self, embeddings, labels):
        aug, aug_labels, _ = self.augmenter.augment(embeddings, labels)
        # the augmenter's statistics, for loggers that only look at the loss
        # (powerful-benchmarker's record-keeper tables)
        for name in self.center_stats:
            setattr(self, name, getattr(self.augmenter, name, 0.0))
        return aug, aug_labels
