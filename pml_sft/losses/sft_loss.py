from typing import Optional

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction

from ..upstream import sft_loss
from ..utils import target_sampling
from ..utils.checks import checked_keywords
from .checked_loss import MOVED, CheckedLoss, finish_plugin_init, plugin_options


class SFTLoss(CheckedLoss, sft_loss.SFTLoss, BaseMetricLossFunction):
    """The Spherical Feature Transform wrapper (Zhu et al., ECCV 2020): the class
    proposed to PML (:class:`pml_sft.upstream.sft_loss.SFTLoss`, whose forward,
    schedule, augmentation step and tuple handling run unchanged), with what
    pml-sft adds around it: inputs checked once at the entry (:class:`CheckedLoss`),
    reproducible draws, and draws that agree across ranks.

    Each training call adds to the batch, for every sample whose class has at
    least two samples in it, ``num_targets`` copies rotated from its class centre
    onto other such classes' centres (norms kept), labelled with those classes: a
    batch needs two classes with two or more samples each (use PML's
    ``MPerClassSampler``); a wrapper that moves few or no samples once its schedule
    augments warns once. The
    wrapped loss, miner, distance and reducer see them as ordinary samples.

    Args:
        loss: the PML loss to wrap (see :meth:`supported_losses`).
        miner: an optional miner, run on the enlarged batch.
        num_targets: target classes per sample.
        transform: ``"rotation"`` (SFT) or ``"translation"`` (the baseline,
            ``x - c_i + c_j`` on the direction of x, norm kept).
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the next
            quarter (the schedule validated in benchmarks/results).
        warmup_iterations: iterations before augmentation starts (default half of
            ``total_iterations``; 0: from the first call). This or
            ``total_iterations`` is required.
        ramp_iterations: iterations of the ramp (default a quarter of
            ``total_iterations``, else 0).
        generator: a ``torch.Generator`` for the target draws; its state is saved in ``state_dict``, so a resumed run draws
            the same. Without one, torch's global RNG.
        keyed_draws: draw targets by a hash of each sample's content and a per-call
            seed (rank 0's under torch.distributed), so that every rank of
            ``DistributedLossWrapper`` makes the same samples. None (default): keyed
            under torch.distributed only.
        collect_stats: record ``mean_center_angle`` (degrees between the source and
            target centres; NaN at calls that augment nothing); ``num_augmented``
            and ``current_aug_weight`` are always recorded.

    An iteration is one call in training mode with gradients enabled; calls in
    eval mode or under ``torch.no_grad()`` return the plain loss and change no
    state. With gradient accumulation over m calls per optimiser step, give the
    schedule in calls (m times the steps).
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        num_targets: int = 1,
        transform: str = "rotation",
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        keyed_draws: Optional[bool] = None,
        collect_stats: Optional[bool] = None,
    ):
        counts = plugin_options(
            type(self),
            loss,
            miner,
            num_targets,
            total_iterations,
            warmup_iterations,
            ramp_iterations,
        )
        super().__init__(
            loss, miner, counts[0], transform, *counts[1:], collect_stats=collect_stats
        )
        finish_plugin_init(self, counts[1])
        self.generator = target_sampling.checked_generator(generator)
        self.keyed_draws = target_sampling.checked_keyed_draws(keyed_draws)

    def target_scores(self, embeddings, center_labels):
        keyed = target_sampling.is_keyed(self.keyed_draws)
        return target_sampling.target_scores(
            embeddings, center_labels, keyed, self.generator
        )

    def get_extra_state(self):
        return target_sampling.generator_state(self.generator)

    def set_extra_state(self, state):
        target_sampling.load_generator_state(self.generator, state, type(self).__name__)
