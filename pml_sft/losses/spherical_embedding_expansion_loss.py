from typing import Optional

import torch

from ..augmenters import SphericalEmbeddingExpansion
from ..centers.base_class_centers import check_labels_in_range
from ..utils.checks import as_number, checked_keywords
from .checked_loss import MOVED, inner_losses
from .feature_transform_loss import FeatureTransformLoss
from .proxy_synthesis_loss import PROXY_PARAMETERS, class_proxies


class SphericalEmbeddingExpansionLoss(FeatureTransformLoss):
    """Spherical Embedding Expansion (SEE, IJCAI 2025) around a PML loss
    (:class:`~pml_sft.SphericalEmbeddingExpansion`). With a proxy loss
    (``ProxyAnchorLoss``, ``NormalizedSoftmaxLoss``, ``ProxyNCALoss``) the points
    are expanded around the class proxies and trained, as in the authors' code,
    in a separate term: ``loss(batch) + aug_weight * loss(points)``, which moves
    the proxies only (the points are detached). With any other loss the points
    are expanded around the batch class means and join the batch (a separate term
    of detached points would change nothing there). The share of the batch
    expanded grows over the augmenting phase (its length: ``total_iterations``
    minus the warm-up; with ``warmup_iterations`` alone, the largest share at
    once).

    Args:
        loss: the PML loss to wrap.
        miner: an optional miner, run on the enlarged batch (pair losses).
        num_points: points per expanded sample (16).
        min_share, max_share: share of the batch expanded when augmentation starts
            and at the end of training (default: 0.04, or ``max_share`` if smaller;
            0.4); ``min_share`` needs ``total_iterations`` (without it the largest
            share is expanded at once, and a ``min_share`` other than
            ``max_share`` is refused).
        aug_weight: the separate term's weight, with ProxyAnchorLoss,
            NormalizedSoftmaxLoss or ProxyNCALoss only (the paper's lambda; default
            0.2). With any other loss (the per-row losses with class weights, such
            as ArcFaceLoss, included) the points join the batch and there is no
            separate term to weigh, so a value is refused (ValueError) and
            ``aug_weight`` is None.
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the next
            quarter.
        warmup_iterations: iterations before augmentation starts (default half of
            ``total_iterations``; 0: from the first call). This or
            ``total_iterations`` is required (a ValueError names both otherwise).
        ramp_iterations: iterations of the ramp (default a quarter of
            ``total_iterations``, else 0).
        generator: a ``torch.Generator`` for the random subspaces.
        keyed_draws: as for :class:`~pml_sft.SphericalEmbeddingExpansion` (keyed
            under torch.distributed by default).
        collect_stats: also make the augmenter collect its statistics.
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        num_points: int = 16,
        min_share: Optional[float] = None,
        max_share: float = 0.4,
        aug_weight: Optional[float] = None,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        keyed_draws: Optional[bool] = None,
        collect_stats: Optional[bool] = None,
    ):
        if min_share not in (None, max_share) and total_iterations is None:
            raise ValueError(
                "min_share (unless it equals max_share) is the share when "
                "augmentation starts, growing to "
                "max_share over the rest of training: it needs total_iterations "
                "(without it the largest share is expanded at once)"
            )
        augmenter = SphericalEmbeddingExpansion(
            num_points,
            default_min_share(min_share, max_share, total_iterations),
            max_share,
            generator=generator,
            keyed_draws=keyed_draws,
            collect_stats=collect_stats,
        )
        super().__init__(
            loss,
            augmenter,
            miner,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
        self.proxy_loss = type(loss).__name__ in PROXY_PARAMETERS
        inside = [type(x).__name__ for x in inner_losses(loss)][1:]
        if any(name in PROXY_PARAMETERS for name in inside):
            raise ValueError(
                f"SphericalEmbeddingExpansionLoss expands around the proxies of the "
                f"loss it wraps, not of the losses inside {type(loss).__name__} "
                f"({', '.join(inside)}): wrap the proxy loss itself"
            )
        self.aug_weight = None  # no separate term to weigh
        if not self.proxy_loss:
            if aug_weight is not None:
                raise ValueError(
                    f"aug_weight weighs the separate term of a proxy loss "
                    f"({', '.join(PROXY_PARAMETERS)}); with {type(loss).__name__} "
                    "the points join the batch, so it would change nothing: leave "
                    "it out"
                )
            return
        if aug_weight is None:
            aug_weight = 0.2
        self.aug_weight = as_number(
            aug_weight, "aug_weight", "a number > 0", lambda v: v > 0
        )
        self.add_to_recordable_attributes(name="aug_weight", is_stat=False)

    def class_proxies(self):
        return class_proxies(self.loss)

    def check_inputs(self, embeddings, labels, indices_tuple=None):
        super().check_inputs(embeddings, labels, indices_tuple)
        if self.proxy_loss:
            num_classes = self.class_proxies().shape[0]
            check_labels_in_range(labels, num_classes, type(self.loss).__name__)

    def augment(self, embeddings, labels):
        total = self.total_iterations
        span = None if total is None else total - self.warmup_iterations
        done = self.step - self.warmup_iterations
        self.augmenter.progress = 1.0 if not span else max(0.0, done / span)
        proxies = self.class_proxies() if self.proxy_loss else None
        aug, aug_labels, _ = self.augmenter.augment(embeddings, labels, proxies)
        return aug, aug_labels

    def inner_loss(self, embeddings, labels, indices_tuple, n):
        if not self.proxy_loss or embeddings.shape[0] == n:
            return super().inner_loss(embeddings, labels, indices_tuple, n)
        # the authors' separate term: the detached points train the proxies
        plain = super().inner_loss(embeddings[:n], labels[:n], indices_tuple, n)
        points = self.loss(embeddings[n:], labels[n:])
        if not isinstance(plain, dict):
            return plain + self.aug_weight * points
        scaled = {  # DoNothingReducer: the points' entries beside the batch's
            f"{k}_points": dict(v, losses=v["losses"] * self.aug_weight)
            for k, v in points.items()
        }
        return {**plain, **scaled}


def default_min_share(min_share, max_share, total_iterations):
    """The share when augmentation starts: as given, else the paper's 0.04 (or
    ``max_share``, if smaller) with ``total_iterations``, and without it
    ``max_share`` (the largest share at once)."""
    if min_share is not None:
        return min_share
    if total_iterations is None or not isinstance(max_share, (int, float)):
        return max_share  # (a bad max_share: the augmenter names it)
    return min(0.04, max_share)
