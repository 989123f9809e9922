from typing import Optional

import torch
from torch.func import functional_call

from ..augmenters import ProxySynthesis
from ..centers.base_class_centers import check_labels_in_range
from ..utils.checks import checked_keywords
from .checked_loss import MOVED
from .feature_transform_loss import FeatureTransformLoss

# the PML losses whose class proxies Proxy Synthesis extends: (parameter, class axis)
PROXY_PARAMETERS = {
    "NormalizedSoftmaxLoss": ("W", 1),
    "ProxyAnchorLoss": ("proxies", 0),
    "ProxyNCALoss": ("proxies", 0),
}


def class_proxies(loss):
    """A proxy loss's proxies (a loss of ``PROXY_PARAMETERS``), one row per class."""
    attribute, axis = PROXY_PARAMETERS[type(loss).__name__]
    proxies = getattr(loss, attribute)
    return proxies if axis == 0 else proxies.t()


def check_table_fits_proxies(loss, num_classes, embedding_size, owner):
    """At construction: a proxy loss's proxies (``PROXY_PARAMETERS``) must have the
    shape of the augmenter's per-class table, (``num_classes``,
    ``embedding_size``); other losses are not checked."""
    if type(loss).__name__ not in PROXY_PARAMETERS:
        return
    shape = tuple(class_proxies(loss).shape)
    if shape != (num_classes, embedding_size):
        raise ValueError(
            f"{owner}(num_classes={num_classes}, embedding_size={embedding_size}) "
            f"does not fit {type(loss).__name__}, whose proxies are {shape[0]} "
            f"classes of {shape[1]} dimensions"
        )


class ProxySynthesisLoss(FeatureTransformLoss):
    """Proxy Synthesis (Gu, Ko & Kim, AAAI 2021) around a PML proxy loss: each
    training batch gains synthetic classes, mixes of pairs of samples of different
    classes with the same mix of their proxies (:class:`~pml_sft.ProxySynthesis`),
    and the loss is computed over the real and synthetic proxies together, the
    synthetic samples labelled with their own synthetic classes. The loss's
    proxies are not changed; the synthetic ones exist for one call.

    The schedule, input checks and statistics are those of
    :class:`~pml_sft.FeatureTransformLoss`.

    Args:
        loss: a built ``ProxyAnchorLoss``, ``NormalizedSoftmaxLoss`` or
            ``ProxyNCALoss``.
        alpha: the Beta distribution's parameter (the paper's default: 0.4).
        mu: synthetic samples per real sample, in (0, 1] (default 1.0).
        total_iterations: the length of training: no augmentation for the first
            half, then the augmented loss's weight ramps from 0 to 1 over the next
            quarter.
        warmup_iterations: iterations before augmentation starts (default half of
            ``total_iterations``; 0: from the first call). This or
            ``total_iterations`` is required (a ValueError names both otherwise).
        ramp_iterations: iterations of the ramp (default a quarter of
            ``total_iterations``, else 0).
        collect_stats: also make the augmenter collect its statistics, copied here.
    """

    @checked_keywords(moved=MOVED)
    def __init__(
        self,
        loss: torch.nn.Module,
        alpha: float = 0.4,
        mu: float = 1.0,
        total_iterations: Optional[int] = None,
        warmup_iterations: Optional[int] = None,
        ramp_iterations: Optional[int] = None,
        collect_stats: Optional[bool] = None,
    ):
        name = type(loss).__name__
        if name not in PROXY_PARAMETERS:
            raise ValueError(
                f"{type(self).__name__} extends the class proxies of "
                f"{', '.join(PROXY_PARAMETERS)}; {name} has none it knows"
            )
        augmenter = ProxySynthesis(alpha, mu, collect_stats=collect_stats)
        super().__init__(
            loss,
            augmenter,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
        self.synthetic_proxies = None

    gives_proxies = True

    def class_proxies(self):
        """The loss's proxies, one row per class."""
        return class_proxies(self.loss)

    def check_inputs(self, embeddings, labels, indices_tuple=None):
        super().check_inputs(embeddings, labels, indices_tuple)
        num_classes = self.class_proxies().shape[0]
        check_labels_in_range(labels, num_classes, type(self.loss).__name__)

    def augment(self, embeddings, labels):
        aug, self.synthetic_proxies, _ = self.augmenter.augment(
            embeddings, labels, self.class_proxies()
        )
        if len(aug) == 0:
            self.synthetic_proxies = None  # (no graph kept: the loss can be copied)
        first = self.class_proxies().shape[0]
        return aug, torch.arange(first, first + len(aug), device=labels.device)

    def inner_loss(self, embeddings, labels, indices_tuple, n):
        if embeddings.shape[0] == n:
            return super().inner_loss(embeddings, labels, indices_tuple, n)
        tuples = self.create_indices_tuple(embeddings, labels, indices_tuple, n)
        attribute, axis = PROXY_PARAMETERS[type(self.loss).__name__]
        real = getattr(self.loss, attribute)
        extra = self.synthetic_proxies.to(real.dtype)
        extended = torch.cat([real, extra if axis == 0 else extra.t()], dim=axis)
        loss, recorded = self.loss, self.loss.num_classes
        real_classes, total = real.shape[axis], extended.shape[axis]
        had_labels = hasattr(loss, "proxy_labels")  # ProxyNCALoss
        try:  # the loss sees the real and synthetic classes for this call only
            loss.num_classes = total  # (ProxyAnchorLoss's one-hot masks)
            if had_labels:
                loss.proxy_labels = torch.arange(total)
            args = (embeddings, labels, tuples)
            return functional_call(loss, {attribute: extended}, args)
        finally:
            self.synthetic_proxies = None  # (no graph kept: the loss can be copied)
            loss.num_classes = recorded
            if had_labels:
                loss.proxy_labels = torch.arange(real_classes)
