from typing import Tuple

import torch

from .base_augmenter import BaseAugmenter, same_class_pairs


class SymmetricalSynthesis(BaseAugmenter):
    """Symmetrical Synthesis (Gu & Ko, AAAI 2020): for every pair of same-class
    embeddings (a, b) of the batch, each member reflected about the axis through
    the other: ``2 <a, b> a - b`` and ``2 <a, b> b - a`` for the unit directions,
    unit vectors labelled with the class (the reflection keeps norms, the paper's
    "symmetric point on the sphere"). Gradients flow to both members.

    The paper pairs one anchor with one positive per class and then takes the
    hardest of real and synthetic negatives in its N-pair or angular loss; here
    every same-class pair of the batch is used, once, and the wrapped PML loss (or
    miner) decides how the new samples are weighted. The method itself has no
    options.

    Args:
        collect_stats: PML's statistics option (default: ``COLLECT_STATS``); the one
            statistic here, ``num_augmented``, is set at every call.

    Returns from ``augmenter(embeddings, labels)``: the new unit samples (first all
    reflections of the second members, then of the first members), their labels,
    and the row of the member each one reflects.
    """

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unit, _ = self.directions(embeddings)
        first, second = same_class_pairs(labels)
        a, b = unit[first], unit[second]
        cos = (a * b).sum(dim=1, keepdim=True)
        aug = torch.cat([2 * cos * a - b, 2 * cos * b - a]).to(embeddings.dtype)
        sources = torch.cat([second, first])
        self.num_augmented = aug.shape[0]
        return aug, labels[sources], sources
