import math
from typing import Dict, Optional, Tuple

import torch

from ..upstream.sft_loss import _batch_class_centers
from ..utils.checks import as_count, as_number, checked_keywords
from ..utils.target_sampling import (
    call_seed,
    checked_generator,
    checked_keyed_draws,
    is_keyed,
    row_keys,
    row_uniforms,
)
from .base_augmenter import BaseAugmenter, GeneratorState


class SphericalEmbeddingExpansion(GeneratorState, BaseAugmenter):
    """Spherical Embedding Expansion (SEE, IJCAI 2025): each of the samples
    nearest their class centre is expanded into ``num_points`` points on the
    sphere at the sample's own angle to the centre, spread around the centre's
    axis: the parts of the sample and of its points orthogonal to the centre form
    a regular simplex (pairwise cosine ``-1 / num_points``) in a random subspace.
    The points keep the class label and, as in the authors' code, are detached:
    they shape the class proxies (or, for pair losses, the real rows through the
    pairs they join), not the network directly.

    Which samples: the share of the batch with the highest cosine to its centre,
    growing over the augmenting phase from ``min_share`` to ``max_share`` on a
    half cosine (the authors' default schedule; :attr:`progress`, from 0 to 1, is
    set by the wrapper). Centres: the class proxies, when a proxy loss's wrapper
    passes them (:class:`~pml_sft.SphericalEmbeddingExpansionLoss`), else the
    batch class means of the classes with two or more samples.

    Args:
        num_points: points per expanded sample (the paper's default: 16); the
            embedding size must exceed ``num_points + 1``.
        min_share: share of the batch expanded when augmentation starts (0.04).
        max_share: share of the batch expanded at the end of training (0.4; above
            0).
        generator: a ``torch.Generator`` for the random subspaces (its state is in
            ``state_dict``).
        keyed_draws: draw each sample's subspace from a hash of its content and a
            per-call seed (rank 0's under torch.distributed), so that every rank of
            ``DistributedLossWrapper`` makes the same points whatever the rows'
            order. None (default): keyed under torch.distributed only.
        collect_stats: PML's statistics option; ``num_augmented`` and
            ``num_expanded`` are set at every call.
    """

    progress = 1.0  # the share of the augmenting phase done (set by the wrapper)
    # the proxies and the share's schedule come from its own wrapper
    needs_own_wrapper = (
        "SphericalEmbeddingExpansionLoss",
        "it gives the schedule of the share expanded and the class proxies",
    )
    # per-row losses whose class weights the detached points barely move (the
    # composability check: their gradient turns by a cosine above 0.999)
    unsupported_losses: Dict[str, str] = dict.fromkeys(
        ("LargeMarginSoftmaxLoss", "SphereFaceLoss"),
        "each row's loss is its own term, so detached points leave the embeddings' "
        "gradient as it is, and they turn the class weights' gradient by less than "
        "a cosine of 0.999",
    )

    @checked_keywords
    def __init__(
        self,
        num_points: int = 16,
        min_share: float = 0.04,
        max_share: float = 0.4,
        *,
        generator: Optional[torch.Generator] = None,
        keyed_draws: Optional[bool] = None,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        self.keyed_draws = checked_keyed_draws(keyed_draws)
        self.num_points = as_count(num_points, "num_points")
        for name, value in (("min_share", min_share), ("max_share", max_share)):
            as_number(value, name, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        if min_share > max_share:
            raise ValueError(f"min_share={min_share} exceeds max_share={max_share}")
        if max_share == 0:
            raise ValueError("max_share=0 would expand no sample: give a share > 0")
        self.min_share, self.max_share = float(min_share), float(max_share)
        self.generator = checked_generator(generator)
        self.num_expanded = 0
        self.add_to_recordable_attributes(
            list_of_names=["num_points", "min_share", "max_share"], is_stat=False
        )
        self.add_to_recordable_attributes(name="num_expanded", is_stat=True)

    def share(self) -> float:
        """The share of the batch expanded at :attr:`progress`."""
        p = min(max(float(self.progress), 0.0), 1.0)
        ramp = (1.0 - math.cos(math.pi * p)) / 2.0
        return self.min_share + (self.max_share - self.min_share) * ramp

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.shape[1] < self.num_points + 2:
            raise ValueError(
                f"{type(self).__name__}(num_points={self.num_points}) needs "
                f"embeddings of at least {self.num_points + 2} dimensions (the centre, "
                f"the sample and a simplex of {self.num_points} points around it), "
                f"got {embeddings.shape[1]}"
            )

    def augment(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        proxies: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` for checked inputs; ``proxies`` (C, D): the class
        centres to expand around (default: the batch class means)."""
        unit, _ = self.directions(embeddings.detach())
        # one seed a call, drawn (and under torch.distributed broadcast) even when
        # nothing is expanded, so that the ranks' collectives stay in step
        with self.evaluation_keeps_generator():  # (an evaluation: as it was)
            seed = call_seed(unit.device, self.generator)
        if proxies is None:
            _, centers, rows = _batch_class_centers(unit, labels)
            has = rows >= 0
            if len(centers) == 0:  # no class with two samples: nothing to expand
                centers = torch.zeros_like(unit[:1])
            center = centers[rows.clamp_min(0)]
        else:
            center, _ = self.directions(proxies.detach().to(embeddings.device))
            center = center.to(unit.dtype)[labels]
            has = torch.ones_like(labels, dtype=torch.bool)
        cos = (unit * center).sum(dim=1)
        radial = unit - cos.unsqueeze(1) * center
        radius = torch.linalg.vector_norm(radial, dim=1)
        # away from the centre by more than the output dtype resolves
        has = has & (radius > torch.finfo(embeddings.dtype).eps ** 0.5)
        eligible = int(has.sum())
        share = self.share()
        # at least one sample once the share is above 0 (a small batch would round
        # the first steps' share to none)
        count = min(max(int(round(share * len(labels))), int(share > 0)), eligible)
        self.num_expanded = count
        if count == 0:
            empty = embeddings[:0].detach()
            self.num_augmented = 0
            return empty, labels[:0], labels[:0]
        score = torch.where(has, cos, torch.full_like(cos, -math.inf))
        rows = torch.sort(torch.topk(score, count).indices).values
        keys = row_keys(embeddings[rows]) if is_keyed(self.keyed_draws) else None
        points = self.expand(
            center[rows], radial[rows], radius[rows], cos[rows], seed, keys
        )
        aug = points.reshape(-1, unit.shape[1]).to(embeddings.dtype)
        sources = rows.repeat_interleave(self.num_points)
        self.num_augmented = aug.shape[0]
        return aug, labels[sources], sources

    def expand(self, center, radial, radius, cos, seed, keys=None):
        """(K, num_points, D) points: ``cos * c + radius * s_j`` for the regular
        simplex s_0 = radial / radius, s_1..s_n in a random subspace orthogonal to
        the centre c (drawn per row from its content ``keys``, if given)."""
        k, d, n = radial.shape[0], radial.shape[1], self.num_points
        u = radial / radius.unsqueeze(1)
        if keys is None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.randn(k, d, n, generator=gen, dtype=torch.float64)
        else:  # Box-Muller on keyed uniforms: the same for a row on every rank
            uniform = row_uniforms(keys, 2 * d * n, seed).double()
            first, second = uniform[:, : d * n], uniform[:, d * n :]
            noise = torch.sqrt(-2 * torch.log1p(-first)) * torch.cos(
                2 * math.pi * second
            )
            noise = noise.view(k, d, n)
        noise = noise.to(device=radial.device, dtype=radial.dtype)
        for axis in (center, u):  # orthogonal to the centre and to the sample
            axis = axis.unsqueeze(2)
            noise = noise - axis * (axis.transpose(1, 2) @ noise)
        basis, _ = torch.linalg.qr(noise)  # (K, D, n) orthonormal columns
        # n unit vectors with pairwise cosine -1/(n-1) in span(basis)
        simplex = torch.eye(n, dtype=radial.dtype, device=radial.device) - 1.0 / n
        norms = torch.linalg.vector_norm(simplex, dim=0, keepdim=True)
        simplex = simplex / norms.clamp_min(1e-12)  # (n = 1: the one point is -s_0)
        w = basis @ simplex  # (K, D, n)
        s = -u.unsqueeze(2) / n + math.sqrt(1.0 - 1.0 / n**2) * w
        points = cos.view(k, 1, 1) * center.unsqueeze(2) + radius.view(k, 1, 1) * s
        return points.transpose(1, 2)
