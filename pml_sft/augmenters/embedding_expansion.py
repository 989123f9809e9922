from typing import Optional, Tuple

import torch

from ..utils.checks import as_count, checked_keywords
from .base_augmenter import BaseAugmenter, same_class_pairs


class EmbeddingExpansion(BaseAugmenter):
    """Embedding Expansion (Ko & Gu, CVPR 2020): for every pair of same-class
    embeddings (a, b) of the batch, ``num_points`` points evenly spaced on the
    segment between their unit directions, ``(1 - t) a + t b`` for
    ``t = k / (num_points + 1)``, L2-normalised and labelled with the class.
    Gradients flow to both members of the pair (the paper's joint loss).

    The paper pairs each sample with its neighbour in a batch of pairs; here every
    same-class pair of the batch is used, once. Points that cannot be normalised
    (a pair of nearly opposite embeddings) are left out. The paper's best loss,
    HPHN triplet, is its own mining choice and is not part of this augmenter.

    Args:
        num_points: points per pair (the paper's default and best: 2).
        collect_stats: PML's statistics option (default: ``COLLECT_STATS``); the one
            statistic here, ``num_augmented``, is set at every call.

    Returns from ``augmenter(embeddings, labels)``: the new unit samples, their
    labels, and the row of each pair's first member.
    """

    @checked_keywords
    def __init__(self, num_points: int = 2, *, collect_stats: Optional[bool] = None):
        super().__init__(collect_stats=collect_stats)
        num_points = as_count(num_points, "num_points")
        self.num_points = num_points
        self.add_to_recordable_attributes(name="num_points", is_stat=False)

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unit, _ = self.directions(embeddings)
        first, second = same_class_pairs(labels)
        k = torch.arange(1, self.num_points + 1, device=unit.device, dtype=unit.dtype)
        t = (k / (self.num_points + 1)).view(1, -1, 1)
        points = (1 - t) * unit[first].unsqueeze(1) + t * unit[second].unsqueeze(1)
        points = points.reshape(-1, unit.shape[1])
        sources = first.repeat_interleave(self.num_points)
        norms = torch.linalg.vector_norm(points, dim=1, keepdim=True)
        keep = (norms > torch.finfo(unit.dtype).eps ** 0.5).squeeze(1)
        if not bool(keep.all()):
            points, norms, sources = points[keep], norms[keep], sources[keep]
        aug = (points / norms).to(embeddings.dtype)
        self.num_augmented = aug.shape[0]
        return aug, labels[sources], sources
