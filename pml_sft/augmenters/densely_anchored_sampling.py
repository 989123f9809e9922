from typing import Optional, Tuple

import torch

from ..centers.base_class_centers import check_sizes, check_table
from ..utils.checks import as_count, as_number, checked_keywords
from ..utils.target_sampling import (
    call_seed,
    checked_keyed_draws,
    is_keyed,
    row_keys,
    row_uniforms,
)
from .base_augmenter import BaseAugmenter

# Losses whose value is a sum of one term per row (each row against class weights
# or proxies): detached copies share no term with the real rows, so they would only
# rescale the plain loss's gradient (1 / (1 + num_produce) with MeanReducer).
PER_ROW = (
    "each row's loss is its own term, which detached copies do not share: the "
    "embeddings' gradient is only rescaled (the class weights' changes direction by "
    "a cosine of about 1 - 1e-5 at the defaults)"
)
PER_ROW_LOSSES = dict.fromkeys(
    (
        "ArcFaceLoss",
        "CosFaceLoss",
        "LargeMarginSoftmaxLoss",
        "NormalizedSoftmaxLoss",
        "P2SGradLoss",
        "ProxyNCALoss",
        "SoftTripleLoss",
        "SphereFaceLoss",
        "SubCenterArcFaceLoss",
    ),
    PER_ROW,
)


class DenselyAnchoredSampling(BaseAugmenter):
    """Densely Anchored Sampling (Liu et al., ECCV 2022): ``num_produce`` detached,
    perturbed copies of every embedding, labelled with its class, as extra anchors.
    Each copy of a unit direction x of class c is

    ``normalize(scale(x) + shift_scale * t)``

    * **Discriminative Feature Scaling**: ``scale`` multiplies the
      ``num_scaled_dims`` dimensions that are most often among the largest entries
      of class c's embeddings (counted over every batch so far) by factors drawn
      uniformly from ``scale_range``, one per sample, dimension and copy.
    * **Memorized Transformation Shifting**: ``t`` is a difference ``x_a - x_b`` of
      two same-class directions of class c, drawn at random from the last
      ``bank_size`` such differences (zero while the class has none).

    The counts and the memory are updated from each batch (training mode only)
    before the copies are made; they live in buffers, so they follow ``.to()`` and
    are saved in ``state_dict``. The copies are detached, as in the paper: the
    gradients reach the real embeddings through the loss terms they share with the
    copies. The draws come from torch's global RNG, or are keyed (``keyed_draws``).

    Args:
        num_classes: labels must lie in ``[0, num_classes)``.
        embedding_size: dimension of the embeddings.
        num_produce: copies per embedding (the official code's default: 3).
        num_scaled_dims: dimensions scaled per copy (the paper's runs: 8; all of
            them when ``embedding_size`` is smaller).
        scale_range: ``(low, high)`` of the scaling factors, ``0 < low <= high``
            (the paper's CUB and Cars runs: (0.99, 1.01)).
        bank_size: differences remembered per class (the official default: 10).
        shift_scale: weight of the remembered difference, below
            ``scale_range[0] / 2`` (the paper's CUB and Cars runs: 0.01; SOP: 0.1).
        keyed_draws: draw the factors and remembered differences from a hash of
            each row's content and a per-call seed (rank 0's), and update the memory
            in an order given by content, so that every rank of
            ``DistributedLossWrapper`` makes the same copies and keeps the same
            memory, whatever the row order. None (default): keyed under
            torch.distributed.
        collect_stats: PML's statistics option (default: ``COLLECT_STATS``); the one
            statistic here, ``num_augmented``, is set at every call.

    The wrappers refuse the losses in :data:`PER_ROW_LOSSES` with it: there the
    copies would leave the training signal as it is (only rescaled).

    Memory: ``num_classes * bank_size * embedding_size`` floats for the differences
    and ``num_classes * embedding_size`` counts (232 MB for SOP's 11,318 classes at
    512-d with the default bank).

    Returns from ``augmenter(embeddings, labels)``: the new unit samples (copy-major:
    the first copy of every row, then the second, ...), their labels, and the row
    each was made from.
    """

    unsupported_losses = PER_ROW_LOSSES

    @checked_keywords
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        num_produce: int = 3,
        num_scaled_dims: int = 8,
        scale_range: Tuple[float, float] = (0.99, 1.01),
        bank_size: int = 10,
        shift_scale: float = 0.01,
        keyed_draws: Optional[bool] = None,
        *,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        num_classes, embedding_size = check_sizes(num_classes, embedding_size)
        self.keyed_draws = checked_keyed_draws(keyed_draws)
        num_produce = as_count(num_produce, "num_produce")
        bank_size = as_count(bank_size, "bank_size")
        num_scaled_dims = as_count(num_scaled_dims, "num_scaled_dims", minimum=0)
        try:
            low, high = (float(v) for v in scale_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"scale_range must be a pair (low, high), got {scale_range!r}"
            ) from None
        if not 0 < low <= high < float("inf"):
            raise ValueError(
                f"scale_range must satisfy 0 < low <= high, got {scale_range!r}"
            )
        # a copy's norm is at least low - 2 * shift_scale (differences of unit
        # rows are at most 2 long), so no copy can vanish
        shift_scale = as_number(
            shift_scale,
            "shift_scale",
            f"in [0, scale_range[0] / 2) = [0, {low / 2:g}), so that no copy can "
            "vanish",
            lambda v: 0 <= v < low / 2,
        )
        if shift_scale == 0 and (num_scaled_dims == 0 or low == high == 1):
            raise ValueError(
                "with shift_scale=0 and no scaling (num_scaled_dims=0 or "
                "scale_range=(1, 1)) every copy would equal its anchor"
            )
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.num_produce = num_produce
        self.num_scaled_dims = min(num_scaled_dims, embedding_size)
        self.scale_range, self.bank_size = (low, high), bank_size
        self.shift_scale = float(shift_scale)
        self.num_targets = num_produce
        shape = (num_classes, embedding_size)
        self.register_buffer("dim_counts", torch.zeros(shape, dtype=torch.long))
        self.register_buffer(
            "bank", torch.zeros(num_classes, bank_size, embedding_size)
        )
        self.register_buffer("bank_filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros(num_classes, dtype=torch.long))
        self.add_to_recordable_attributes(
            list_of_names=["num_produce", "num_scaled_dims", "shift_scale"],
            is_stat=False,
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "bank"
        if key in state_dict and state_dict[key].shape != self.bank.shape:
            raise ValueError(
                f"cannot load a memory of shape {tuple(state_dict[key].shape)} "
                "(num_classes, bank_size, embedding_size) into "
                f"{type(self).__name__} with shape {tuple(self.bank.shape)}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        check_table(self, self.bank, embeddings, labels)

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unit, _ = self.directions(embeddings.detach())
        labels = labels.long()
        n, d, k = unit.shape[0], unit.shape[1], self.num_produce
        uniforms = None  # keyed: (n, k * (num_scaled_dims + 1)) from the rows' bits
        if is_keyed(self.keyed_draws):
            keys = row_keys(embeddings)
            seed = call_seed(embeddings.device)
            uniforms = row_uniforms(keys, k * (self.num_scaled_dims + 1), seed)
            uniforms = uniforms.view(n, k, self.num_scaled_dims + 1)
            uniforms = uniforms.transpose(0, 1).to(unit.dtype)
            order = torch.argsort(keys, stable=True)  # the memory's order
        if self.training and torch.is_grad_enabled():  # not in an evaluation
            if uniforms is None:
                self.remember(unit, labels)
            else:
                self.remember(unit[order], labels[order])
        copies = unit.unsqueeze(0).repeat(k, 1, 1)  # (k, n, d)
        if self.num_scaled_dims > 0 and n > 0:
            # the class's most frequent top dimensions (ties: the lower index)
            order = torch.arange(d, 0, -1, device=unit.device)
            keys = self.dim_counts[labels] * (d + 1) + order  # int64: exact
            dims = keys.topk(self.num_scaled_dims, dim=1).indices
            low, high = self.scale_range
            if uniforms is None:
                draws = torch.rand(k, n, self.num_scaled_dims, device=unit.device)
            else:
                draws = uniforms[:, :, : self.num_scaled_dims]
            factors = (low + (high - low) * draws).to(unit.dtype)
            index = dims.unsqueeze(0).expand(k, -1, -1)
            copies = copies.scatter(2, index, copies.gather(2, index) * factors)
        if self.shift_scale > 0 and n > 0:
            filled = self.bank_filled[labels]  # (n,)
            if uniforms is None:
                draw = torch.rand(k, n, device=unit.device)
            else:
                draw = uniforms[:, :, -1]
            slot = (draw * filled.clamp(min=1)).long().clamp(max=self.bank_size - 1)
            shifts = self.bank[labels.expand(k, -1), slot].to(unit.dtype)
            shifts = shifts * (filled > 0).to(unit.dtype).view(1, n, 1)
            copies = copies + self.shift_scale * shifts
        aug = torch.nn.functional.normalize(copies.reshape(k * n, d), dim=1)
        sources = torch.arange(n, device=unit.device).repeat(k)
        self.num_augmented = aug.shape[0]
        return aug.to(embeddings.dtype), labels[sources], sources

    @torch.no_grad()
    def remember(self, unit: torch.Tensor, labels: torch.Tensor) -> None:
        """Count each row's largest dimensions for its class, and append the batch's
        same-class differences ``x_a - x_b`` (ordered pairs a != b, in row order) to
        each class's ring buffer of ``bank_size`` (only the last ``bank_size`` of a
        batch can stay, so only those are computed)."""
        n = unit.shape[0]
        if n == 0:
            return
        if self.num_scaled_dims > 0:
            top = unit.topk(self.num_scaled_dims, dim=1).indices
            rows = labels.unsqueeze(1).expand_as(top)
            ones = torch.ones_like(top)
            self.dim_counts.index_put_((rows, top), ones, accumulate=True)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        same.fill_diagonal_(False)
        a, b = same.nonzero(as_tuple=True)  # ordered pairs, a-major
        if a.numel() == 0:
            return
        classes = labels[a]
        order = torch.sort(classes, stable=True).indices
        a, b, classes = a[order], b[order], classes[order]
        per_class = torch.bincount(classes, minlength=self.num_classes)
        starts = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(len(classes), device=unit.device) - starts[classes]
        kept = rank >= per_class[classes] - self.bank_size
        a, b, classes, rank = a[kept], b[kept], classes[kept], rank[kept]
        slots = (self.bank_next[classes] + rank) % self.bank_size
        self.bank[classes, slots] = (unit[a] - unit[b]).to(self.bank.dtype)
        self.bank_next.copy_((self.bank_next + per_class) % self.bank_size)
        self.bank_filled.copy_((self.bank_filled + per_class).clamp(max=self.bank_size))
