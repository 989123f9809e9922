import math
from typing import Dict, Optional, Tuple

import torch

from ..upstream.sft_loss import _batch_class_centers
from ..utils.checks import as_count, checked_keywords
from ..utils.target_sampling import call_seed, checked_generator
from .base_augmenter import BaseAugmenter


class SphericalEmbeddingExpansion(BaseAugmenter):
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
        max_share: share of the batch expanded at the end of training (0.4).
        generator: a ``torch.Generator`` for the random subspaces (its state is in
            ``state_dict``); under torch.distributed every rank draws from rank
            0's seed, so the ranks make the same points.
        collect_stats: PML's statistics option; ``num_augmented`` and
            ``num_expanded`` are set at every call.
    """

    progress = 1.0  # the share of the augmenting phase done (set by the wrapper)
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
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        self.num_points = as_count(num_points, "num_points")
        for name, value in (("min_share", min_share), ("max_share", max_share)):
            if isinstance(value, bool) or not (
                isinstance(value, (int, float)) and 0 <= value <= 1
            ):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if min_share > max_share:
            raise ValueError(f"min_share={min_share} exceeds max_share={max_share}")
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
        if proxies is None:
            _, centers, rows = _batch_class_centers(unit, labels)
            has = rows >= 0
            center = centers[rows.clamp_min(0)]
        else:
            center, _ = self.directions(proxies.detach().to(embeddings.device))
            center, has = center[labels], torch.ones_like(labels, dtype=torch.bool)
        cos = (unit * center).sum(dim=1)
        radial = unit - cos.unsqueeze(1) * center
        radius = torch.linalg.vector_norm(radial, dim=1)
        has = has & (radius > torch.finfo(unit.dtype).eps ** 0.5)
        count = min(int(round(self.share() * len(labels))), int(has.sum()))
        self.num_expanded = count
        if count == 0:
            empty = embeddings[:0].detach()
            self.num_augmented = 0
            return empty, labels[:0], labels[:0]
        score = torch.where(has, cos, torch.full_like(cos, -math.inf))
        rows = torch.sort(torch.topk(score, count).indices).values
        points = self.expand(center[rows], radial[rows], radius[rows], cos[rows])
        aug = points.reshape(-1, unit.shape[1]).to(embeddings.dtype)
        sources = rows.repeat_interleave(self.num_points)
        self.num_augmented = aug.shape[0]
        return aug, labels[sources], sources

    def expand(self, center, radial, radius, cos):
        """(K, num_points, D) points: ``cos * c + radius * s_j`` for the regular
        simplex s_0 = radial / radius, s_1..s_n in a random subspace orthogonal to
        the centre c."""
        k, d, n = radial.shape[0], radial.shape[1], self.num_points
        u = radial / radius.unsqueeze(1)
        seed = call_seed(radial.device, self.generator)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(k, d, n, generator=gen, dtype=torch.float64)
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

    def get_extra_state(self):
        from ..utils.target_sampling import generator_state

        return generator_state(self.generator)

    def set_extra_state(self, state):
        from ..utils.target_sampling import load_generator_state

        load_generator_state(self.generator, state, type(self).__name__)
