from typing import Optional, Tuple

import numpy
import torch

from ..centers.base_class_centers import check_labels_in_range
from ..utils.checks import (
    as_number,
    check_batch,
    check_directions,
    check_embeddings,
    checked_keywords,
)
from ..utils.target_sampling import (
    call_seed,
    checked_keyed_draws,
    is_keyed,
    keyed_scores,
    row_keys,
    row_uniforms,
)
from .base_augmenter import BaseAugmenter


class ProxySynthesis(BaseAugmenter):
    """Proxy Synthesis (Gu, Ko & Kim, AAAI 2021): synthetic classes for proxy and
    softmax losses. With one ``lam ~ Beta(alpha, alpha)`` per call, a sample x_i of
    class y_i and a partner x_j of another class give the synthetic sample
    ``normalize(lam x_i + (1 - lam) x_j)`` and its synthetic proxy
    ``normalize(lam p_yi + (1 - lam) p_yj)`` (unit directions and unit proxies);
    each synthetic sample is a class of its own. Gradients flow to the embeddings
    and to the proxies. Use it through :class:`~pml_sft.ProxySynthesisLoss`.

    The official code mixes each row with the next one of the batch, for batches
    whose adjacent labels differ (one sample per class); PML's ``MPerClassSampler``
    puts same-class rows next to each other, and the mix of a class with itself
    would be a synthetic class with a real class's proxy, so here the partner is a
    random row of another class.

    Args:
        alpha: the Beta distribution's parameter (the paper's default: 0.4).
        mu: synthetic samples per real sample, in (0, 1] (default 1.0): a random
            ``round(mu * N)`` of the rows that have a partner are mixed.
        keyed_draws: draw partners, the subset and lam from a hash of the rows'
            content and a per-call seed (rank 0's), so that every rank of
            ``DistributedLossWrapper`` makes the same samples whatever the row
            order. None (default): keyed under torch.distributed.
        collect_stats: PML's statistics option (default: ``COLLECT_STATS``); the
            statistics here, ``num_augmented`` and ``mix_weight`` (lam), are set at
            every call.

    ``augmenter(embeddings, labels, proxies)`` (proxies: one row per class) returns
    ``(aug_embeddings, aug_proxies, source_indices)``.
    """

    needs_proxies = True

    @checked_keywords
    def __init__(
        self,
        alpha: float = 0.4,
        mu: float = 1.0,
        keyed_draws: Optional[bool] = None,
        *,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        self.keyed_draws = checked_keyed_draws(keyed_draws)
        self.alpha = as_number(
            alpha, "alpha", "a finite number > 0", lambda v: 0 < v < float("inf")
        )
        self.mu = as_number(mu, "mu", "in (0, 1]", lambda v: 0 < v <= 1)
        self.add_to_recordable_attributes(list_of_names=["alpha", "mu"], is_stat=False)
        self.add_to_recordable_attributes(name="mix_weight", is_stat=True)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            embeddings: (N, D) embeddings.
            labels: (N,) integer labels in ``[0, len(proxies))``.
            proxies: (C, D) class proxies, one row per class.

        Returns:
            aug_embeddings (M, D), aug_proxies (M, D), source_indices (M,).
        """
        check_batch(embeddings, labels)
        check_directions(embeddings, "embeddings")
        check_embeddings(proxies, "proxies")
        if proxies.shape[1] != embeddings.shape[1]:
            raise ValueError("proxies must have one row per class, of embedding size")
        check_labels_in_range(labels, proxies.shape[0], type(self).__name__)
        return self.augment(embeddings, labels.to(embeddings.device), proxies)

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = labels.long()  # (uint8 labels would index as a boolean mask)
        unit, _ = self.directions(embeddings)
        unit_proxies = torch.nn.functional.normalize(proxies.to(unit.dtype), dim=1)
        n, keyed = unit.shape[0], is_keyed(self.keyed_draws)
        # (every rank takes part in the seed's broadcast, an empty one too)
        seed = call_seed(embeddings.device) if keyed else None
        if n == 0:
            self.num_augmented = 0
            return embeddings, proxies[:0], labels[:0]
        other = labels.unsqueeze(0) != labels.unsqueeze(1)
        if keyed:  # from the rows' bits and rank 0's seed
            keys = row_keys(embeddings)
            scores = keyed_scores(keys, keys, seed)
            picks = row_uniforms(keys, 1, seed ^ 1)[:, 0]
            lam = float(numpy.random.default_rng(seed).beta(self.alpha, self.alpha))
        else:
            scores = torch.rand(n, n, device=unit.device)
            picks = torch.rand(n, device=unit.device)
            lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        best = scores.masked_fill(~other, -1.0).max(dim=1)
        sources = (best.values >= 0).nonzero(as_tuple=True)[0]
        count = min(len(sources), int(round(self.mu * n)))
        chosen = picks[sources].topk(count).indices  # a random subset of the rows
        sources = sources[chosen.sort().values]
        partners = best.indices[sources]
        self.mix_weight = lam
        mixed = lam * unit[sources] + (1 - lam) * unit[partners]
        mixed_proxies = (
            lam * unit_proxies[labels[sources]]
            + (1 - lam) * unit_proxies[labels[partners]]
        )
        tiny = torch.finfo(unit.dtype).eps ** 0.5
        norms = torch.linalg.vector_norm(mixed, dim=1, keepdim=True)
        proxy_norms = torch.linalg.vector_norm(mixed_proxies, dim=1, keepdim=True)
        keep = ((norms > tiny) & (proxy_norms > tiny)).squeeze(1)
        if not bool(keep.all()):  # opposite directions: no direction to keep
            mixed, norms, sources = mixed[keep], norms[keep], sources[keep]
            mixed_proxies, proxy_norms = mixed_proxies[keep], proxy_norms[keep]
        self.num_augmented = len(sources)
        aug = (mixed / norms).to(embeddings.dtype)
        return aug, (mixed_proxies / proxy_norms).to(proxies.dtype), sources
