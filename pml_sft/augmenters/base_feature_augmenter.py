import functools
import math
from typing import Any, Optional, Tuple, cast

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from ..centers import BaseClassCenters, BatchClassCenters
from ..upstream.sft_loss import _transform
from ..utils.checks import (
    Init,
    as_count,
    check_batch,
    check_directions,
    check_embeddings,
    check_labels,
    checked_keywords,
)
from ..utils.target_sampling import (
    checked_generator,
    checked_keyed_draws,
    is_keyed,
    row_keys,
    target_scores,
)
from .base_augmenter import BaseAugmenter, GeneratorState

TARGET_POOLS = ("batch", "all")
# the options the study ablated, now in pml_sft.contrib
ABLATION_OPTIONS = (
    "nearest_targets",
    "strength",
    "consistent_only",
    "normalize_embeddings",
    "detach_centers",
    "detach_augmented",
)


def ablation_checked(init: Init) -> Init:
    """:func:`~pml_sft.centers.base_class_centers.checked_keywords` for the feature
    augmenters, whose options that the study ablated moved to :mod:`pml_sft.contrib`:
    those are refused naming the class that takes them."""
    checked = checked_keywords(init)

    @functools.wraps(init)
    def refuse_ablated(self: Any, *args: Any, **kwargs: Any) -> None:
        ablated = sorted(set(ABLATION_OPTIONS) & set(kwargs))
        if ablated:
            name = type(self).__name__
            raise TypeError(
                f"{name} takes no {ablated}: the options the study ablated are in "
                f"pml_sft.contrib (Ablation{name})"
            )
        checked(self, *args, **kwargs)

    return cast(Init, refuse_ablated)


class BaseFeatureAugmenter(GeneratorState, BaseAugmenter):
    """Creates new samples in feature space by moving embeddings of class i to another
    class j, using class centres.

    Called like a PML miner, ``augmenter(embeddings, labels)``, it returns
    ``(aug_embeddings, aug_labels, source_indices)``: the new samples (each with its
    source's norm), their (target) labels, and the row of ``embeddings`` each one
    was made from. The step is the upstream file's
    (:func:`pml_sft.upstream.sft_loss._transform`, as in :class:`~pml_sft.SFTLoss`);
    this class supplies its centres (any :class:`~pml_sft.centers.BaseClassCenters`)
    and target draws, and records statistics; subclasses define :meth:`move`, how a
    row moves from a source centre to a target centre. The options the study
    ablated (nearest targets, strength, a consistency filter, detaching, unit
    output) are in :mod:`pml_sft.contrib`.

    Args:
        centers: a :class:`~pml_sft.centers.BaseClassCenters` (default
            ``BatchClassCenters()``: normalised per-class batch means, >= 2 samples
            per class).
        num_targets: target classes per sample (k). Each sample yields k new samples
            with k distinct targets; fewer when fewer classes are allowed.
        target_pool: ``"batch"`` draws targets from the other classes of the batch;
            ``"all"`` from every class with a known centre (needs centres with memory,
            e.g. ``MovingAverageClassCenters``).
        generator: a ``torch.Generator`` for reproducible target draws (without one,
            the global RNG). Its state is saved in ``state_dict``, so a resumed run
            draws the same targets.
        keyed_draws: draw targets by a hash of each sample's content and a seed
            drawn per call (:mod:`pml_sft.utils.target_sampling`) instead of from the
            generator's stream, and sum centres with the rows in an order given by
            content: reordering the batch then reorders the output with it, and every
            rank of a distributed run that sees the same gathered batch makes the
            same samples. None (default): keyed under torch.distributed, plain random
            draws otherwise.
        collect_stats: record ``num_augmented``, ``num_unmoved_samples``,
            ``num_target_classes``, ``mean_center_angle`` and
            ``share_nearest_target`` (default: PML's ``COLLECT_STATS``).
    """

    # centres from detached embeddings (the contrib augmenters can change it)
    detach_centers = True

    @ablation_checked
    def __init__(
        self,
        centers: Optional[BaseClassCenters] = None,
        num_targets: int = 1,
        target_pool: str = "batch",
        generator: Optional[torch.Generator] = None,
        keyed_draws: Optional[bool] = None,
        *,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        centers = BatchClassCenters() if centers is None else centers
        if not isinstance(centers, BaseClassCenters):
            raise TypeError(
                f"centers must be a pml_sft BaseClassCenters, got {type(centers).__name__}"
            )
        num_targets = as_count(num_targets, "num_targets")
        if target_pool not in TARGET_POOLS:
            raise ValueError(
                f"target_pool must be one of {TARGET_POOLS}, got {target_pool!r}"
            )
        if target_pool == "all" and not centers.remembers_classes:
            raise ValueError(
                f"target_pool='all' needs centres that remember classes absent from "
                f"the batch (MovingAverageClassCenters, ...); {type(centers).__name__} "
                "knows only the batch's classes, so it would act as 'batch'"
            )
        self.centers = centers
        self.num_targets = num_targets
        self.target_pool = target_pool
        self.generator = checked_generator(generator)
        self.keyed_draws = checked_keyed_draws(keyed_draws)
        self.add_to_recordable_attributes(
            list_of_names=["num_targets", "target_pool"], is_stat=False
        )
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_unmoved_samples",
                "num_target_classes",
                "mean_center_angle",
                "share_nearest_target",
            ],
            is_stat=True,
        )

    def move(
        self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> torch.Tensor:
        """Move the rows ``x`` (M, D; any norm) from the unit centres ``src`` (M, D)
        to ``dst`` (M, D), all in the compute dtype (float32 for half precision),
        keeping their norms. Gradients must flow to ``x``."""
        raise NotImplementedError

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            embeddings: (N, D) embeddings to augment.
            labels: (N,) integer labels (moved to the embeddings' device).
            ref_emb, ref_labels: optional extra labelled embeddings used only to
                estimate class centres (e.g. a memory bank); they are not transformed.

        Returns:
            aug_embeddings (M, D), aug_labels (M,), source_indices (M,).
        """
        check_batch(embeddings, labels)
        check_directions(embeddings, "embeddings")
        labels = c_f.to_device(labels, embeddings)
        if ref_emb is not None or ref_labels is not None:
            check_embeddings(ref_emb, "ref_emb")
            check_labels(ref_labels, ref_emb.shape[0], "ref_labels")
            check_directions(ref_emb, "ref_emb")
            ref_labels = c_f.to_device(ref_labels, embeddings)
            if ref_emb.shape[1] != embeddings.shape[1]:
                raise ValueError("ref_emb must have the embeddings' size")
        self.check_inputs(embeddings, labels)
        return self.augment(embeddings, labels, ref_emb, ref_labels)

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        self.centers.check_inputs(embeddings, labels)

    def augment(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` for inputs already checked (labels on the embeddings'
        device), as the loss wrappers call it. The step itself is the upstream
        file's (:func:`pml_sft.upstream.sft_loss._transform`), given this
        augmenter's centres, target scores and :meth:`move`."""
        self.reset_stats()
        unit, _ = self.directions(embeddings)
        keyed = is_keyed(self.keyed_draws)
        keys = row_keys(embeddings) if keyed else None
        table_labels, table = self.estimate_centers(
            unit, labels, keys, ref_emb, ref_labels
        )
        with self.evaluation_keeps_generator():
            scores = target_scores(
                embeddings, table_labels, keyed, self.generator, keys
            )
        scores = self.restrict_scores(scores, unit, labels, table_labels, table)
        aug, sources, src_rows, dst_rows = _transform(
            embeddings,
            labels,
            table_labels,
            table,
            scores,
            self.moved,
            self.num_targets,
        )
        nearest = None
        if self.collect_stats:
            nearest = nearest_is_target(aug, table, dst_rows)
        keep = self.keep(aug, table, dst_rows, nearest)
        if keep is not None:
            aug, sources = aug[keep], sources[keep]
            src_rows, dst_rows = src_rows[keep], dst_rows[keep]
            nearest = None if nearest is None else nearest[keep]
        aug = self.finish(aug)
        if self.collect_stats:
            self.record_stats(
                embeddings.shape[0], sources, table[src_rows], table[dst_rows], nearest
            )
            self.num_target_classes = int(dst_rows.unique().shape[0])
        return aug, table_labels[dst_rows].to(labels.dtype), sources

    def moved(
        self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`move` to the :meth:`destinations` of the sources."""
        return self.move(x, src, self.destinations(src, dst))

    def restrict_scores(
        self,
        scores: torch.Tensor,
        unit: torch.Tensor,
        labels: torch.Tensor,
        table_labels: torch.Tensor,
        table: torch.Tensor,
    ) -> torch.Tensor:
        """The (N, K) target scores; a negative score rules a target out."""
        return scores

    def destinations(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Where sources whose centres are ``src`` move to: the target centres."""
        return dst

    def keep(
        self,
        aug: torch.Tensor,
        table: torch.Tensor,
        target_rows: torch.Tensor,
        nearest: Optional[torch.Tensor],
    ) -> Optional[torch.Tensor]:
        """Which new samples to keep (a bool mask), or None for all of them;
        ``nearest`` says which lie nearest their target's centre (None when
        statistics are off)."""
        return None

    def finish(self, aug: torch.Tensor) -> torch.Tensor:
        """The new samples as returned."""
        return aug

    def estimate_centers(
        self,
        unit: torch.Tensor,
        labels: torch.Tensor,
        keys: Optional[torch.Tensor],
        ref_emb: Optional[torch.Tensor],
        ref_labels: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(labels (K,), unit centres (K, D)) of the target pool: centres from the
        batch's unit rows (plus the reference set), of the batch's classes or (pool
        "all") of every known class. With ``keys`` the rows are summed in an order
        given by their content, so that the float sums, hence the centres, are
        bit-identical however the batch is ordered."""
        rows, row_labels = unit, labels
        if ref_emb is not None:
            ref_unit, _ = self.directions(ref_emb.detach())
            rows = torch.cat([unit, ref_unit.to(unit.dtype)])
            row_labels = torch.cat([labels, ref_labels.to(labels.dtype)])
            if keys is not None:
                keys = torch.cat([keys, row_keys(ref_emb)])
        if keys is not None:
            order = torch.argsort(keys, stable=True)
            rows, row_labels = rows[order], row_labels[order]
        centers = self.centers.estimate(
            rows,
            row_labels,
            include_absent=self.target_pool == "all",
            detach=self.detach_centers,
        )
        if centers.centers.dtype != unit.dtype:  # e.g. float32 moving averages
            centers.centers = torch.nn.functional.normalize(
                centers.centers.to(unit.dtype), dim=1
            )
        if self.target_pool == "batch":
            return centers.labels[centers.in_batch], centers.centers[centers.in_batch]
        return centers.labels, centers.centers

    def record_stats(
        self,
        n: int,
        source_indices: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        nearest: Optional[torch.Tensor],
    ) -> None:
        with torch.no_grad():
            self.num_augmented = source_indices.shape[0]
            self.num_unmoved_samples = n - int(torch.unique(source_indices).shape[0])
            self.mean_center_angle = 0.0
            if src.shape[0] > 0:
                cos = (src.float() * dst.float()).sum(dim=1).clamp(-1, 1)
                self.mean_center_angle = math.degrees(torch.acos(cos).mean().item())
            self.share_nearest_target = 0.0
            if nearest is not None and nearest.shape[0] > 0:
                self.share_nearest_target = nearest.float().mean().item()


def nearest_is_target(aug, table, target_rows):
    """For each new sample, whether its nearest centre (of ``table``) is its
    target's."""
    if aug.shape[0] == 0:  # (argmax needs a centre; there are none then)
        return torch.ones_like(target_rows, dtype=torch.bool)
    similarity = aug.detach().to(table.dtype) @ table.detach().T
    return similarity.argmax(dim=1) == target_rows
