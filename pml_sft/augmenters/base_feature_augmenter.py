import math

import torch
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from ..centers import BaseClassCenters, BatchClassCenters
from ..utils import distributed
from ..utils.checks import check_embeddings, check_finite, check_labels
from ..utils.target_sampling import (
    draw_seed,
    keyed_scores,
    random_other_rows,
    random_scores,
    row_keys,
    sample_target_rows,
)

TARGET_POOLS = ("batch", "all")


class BaseFeatureAugmenter(ModuleWithRecords):
    """Creates new samples in feature space by moving embeddings of class i to another
    class j, using class centres.

    Called like a PML miner, ``augmenter(embeddings, labels)``, it returns
    ``(aug_embeddings, aug_labels, source_indices)``: the new samples, their (target)
    labels, and the row of ``embeddings`` each one was made from. Subclasses define
    :meth:`transform_rows`, the map from a source centre to a target centre.

    Args:
        centers: a :class:`~pml_sft.centers.BaseClassCenters` (default
            ``BatchClassCenters()``: normalised per-class batch means, >= 2 samples
            per class).
        num_targets: target classes per sample (k). Each sample yields k new samples
            with k distinct targets; fewer when fewer other classes are available.
        target_pool: ``"batch"`` draws targets from the other classes of the batch;
            ``"all"`` from every class with a known centre (needs centres with memory,
            e.g. ``MovingAverageClassCenters``).
        normalize_embeddings: L2-normalise inputs and return unit vectors. With
            False the transform still acts on directions, and each new sample keeps
            the norm of its source.
        detach_centers: estimate centres from detached embeddings (default); with
            False gradients flow through the batch centres too (batch centres only).
        detach_augmented: return new samples without gradient, so they act as fixed
            extra positives/negatives. Default False: gradients reach the sources.
        generator: a ``torch.Generator`` for reproducible target draws (one seed is
            drawn from it per call; without one, from the global RNG). Its state is
            saved in ``state_dict``, so a resumed run draws the same targets.

        keyed_draws: draw targets by a hash of each sample's content and the call's
            seed (:mod:`pml_sft.utils.target_sampling`) instead of from the generator's
            stream, and sum centres in an order given by content: reordering the batch
            then reorders the output with it, and every rank of a distributed run that
            sees the same gathered batch makes the same samples. None (default): keyed
            under torch.distributed, plain random draws otherwise (cheaper).
    """

    def __init__(
        self,
        centers=None,
        num_targets=1,
        target_pool="batch",
        normalize_embeddings=True,
        detach_centers=True,
        detach_augmented=False,
        generator=None,
        keyed_draws=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if centers is None:
            centers = BatchClassCenters()
        if not isinstance(centers, BaseClassCenters):
            raise TypeError(
                f"centers must be a pml_sft BaseClassCenters, got {type(centers).__name__}"
            )
        if not (isinstance(num_targets, int) and num_targets >= 1):
            raise ValueError(f"num_targets must be an int >= 1, got {num_targets!r}")
        if target_pool not in TARGET_POOLS:
            raise ValueError(
                f"target_pool must be one of {TARGET_POOLS}, got {target_pool!r}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}"
            )
        if not detach_centers and not isinstance(centers, BatchClassCenters):
            raise ValueError("detach_centers=False needs BatchClassCenters")
        self.centers = centers
        self.num_targets = num_targets
        self.target_pool = target_pool
        self.normalize_embeddings = normalize_embeddings
        self.detach_centers = detach_centers
        self.detach_augmented = detach_augmented
        self.generator = generator
        self.keyed_draws = keyed_draws
        self.add_to_recordable_attributes(
            list_of_names=["num_targets", "normalize_embeddings", "detach_augmented"],
            is_stat=False,
        )
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_augmented",
                "num_unmoved_samples",
                "num_target_classes",
                "mean_center_angle",
            ],
            is_stat=True,
        )

    def transform_rows(self, x, unit, norms, centers, src_rows, dst_rows):
        """Move rows ``x`` (M, D) from the unit centres ``centers[src_rows]`` to
        ``centers[dst_rows]`` (``centers`` is (K, D)).

        ``unit`` and ``norms`` are the rows' directions and norms, computed without
        gradient in the compute dtype (float32 for half-precision input), which is
        also the dtype of ``centers``. The transform acts on the directions; the
        result is a unit vector when ``self.normalize_embeddings``, else it keeps the
        norm of its source row. Gradients must flow to ``x``."""
        raise NotImplementedError

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """Args:
            embeddings: (N, D) embeddings to augment.
            labels: (N,) integer labels.
            ref_emb, ref_labels: optional extra labelled embeddings used only to
                estimate class centres (e.g. a memory bank); they are not transformed.

        Returns:
            aug_embeddings (M, D), aug_labels (M,), source_indices (M,).
        """
        return self.augment(embeddings, labels, ref_emb, ref_labels)

    def augmented_batch(self, embeddings, labels):
        """The batch with its augmented samples appended, as the loss wrappers train
        on it: ``(torch.cat([embeddings, aug_embeddings]), torch.cat([labels,
        aug_labels]))``. The same as concatenating the output of a call, in fewer
        operations where a fused path applies."""
        return self.augment(embeddings, labels, append=True)

    def augment(self, embeddings, labels, ref_emb=None, ref_labels=None, append=False):
        """:meth:`forward`, or :meth:`augmented_batch` when ``append``."""
        self.reset_stats()
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0], embeddings.device)
        n = embeddings.shape[0]
        keyed = self.keyed_draws
        if keyed is None:
            keyed = distributed.is_distributed()
        if self.fused_path_applies(n, keyed, ref_emb, ref_labels):
            fused = self.fused_forward(embeddings, labels, append)
            if fused is not None:
                return fused
        with torch.no_grad():
            directions, norms = self.directions(embeddings, "embeddings")
            keys = row_keys(embeddings) if keyed else None
        center_emb, center_labels, center_keys = directions, labels, keys
        if ref_emb is not None or ref_labels is not None:
            center_emb, center_labels, center_keys = self.with_reference(
                embeddings, labels, directions, keys, ref_emb, ref_labels
            )
        if self.detach_centers:
            centers = self.canonical_centers(center_emb, center_labels, center_keys)
        else:
            centers = self.batch_centers_with_gradient(embeddings, labels)
        sample_rows = centers.sample_rows[:n]
        all_have_centres = centers.dense or bool((sample_rows >= 0).all())
        source_samples = (
            None if all_have_centres else (sample_rows >= 0).nonzero().squeeze(1)
        )
        all_candidates = centers.dense or self.target_pool == "all"
        candidate_mask = (
            torch.ones_like(centers.in_batch) if all_candidates else centers.in_batch
        )
        sources = sample_rows if all_have_centres else sample_rows[source_samples]
        source_keys = None
        if keyed:
            source_keys = keys if all_have_centres else keys[source_samples]
        positions, target_rows = self.draw_targets(
            sources, candidate_mask, centers.labels, source_keys, all_candidates
        )
        if all_have_centres and positions.shape[0] == n:  # one target each: no gathers
            source_indices = positions
            rows_x, rows_unit, rows_norms = embeddings, directions, norms
            src_rows = sample_rows
        else:
            source_indices = (
                positions
                if all_have_centres
                else source_samples.index_select(0, positions)
            )
            rows_x = embeddings.index_select(0, source_indices)
            rows_unit = directions.index_select(0, source_indices)
            rows_norms = norms.index_select(0, source_indices)
            src_rows = sample_rows.index_select(0, source_indices)
        table = centers.centers
        if table.dtype != directions.dtype:
            table = torch.nn.functional.normalize(table.to(directions.dtype), dim=1)
        aug = self.transform_rows(
            rows_x, rows_unit, rows_norms, table, src_rows, target_rows
        )
        aug = aug.to(embeddings.dtype)
        if self.detach_augmented:
            aug = aug.detach()
        aug_labels = centers.labels[target_rows].to(labels.dtype)
        if self.collect_stats:
            self.record_stats(
                n, source_indices, candidate_mask, table, src_rows, target_rows
            )
        if append:
            return torch.cat([embeddings, aug]), torch.cat([labels, aug_labels])
        return aug, aug_labels, source_indices

    def fused_path_applies(self, n, keyed, ref_emb, ref_labels):
        """Whether :meth:`fused_forward` may handle this call: the default setting
        (plain batch centres, one target from the other classes, normalised output,
        no reference set, unkeyed draws)."""
        centers = self.centers
        return (
            n > 0
            and type(centers) is BatchClassCenters
            and not (centers.sync_distributed and distributed.is_distributed())
            and self.detach_centers
            and self.normalize_embeddings
            and self.num_targets == 1
            and not keyed
            and ref_emb is None
            and ref_labels is None
        )

    def fused_forward(self, embeddings, labels, append=False):
        """The forward of the default setting in fused (compiled) kernels; returns
        the same triple as :meth:`augment`, or None to use the general path.
        Subclasses with such a path override it."""
        return None

    def fused_output(
        self,
        embeddings,
        labels,
        rows,
        row_labels,
        centers,
        src_rows,
        targets,
        append,
        appended_by_kernel,
    ):
        """Finish :meth:`fused_forward`: dtypes, detaching, statistics and, when
        ``append``, the enlarged batch. ``rows`` and ``row_labels`` are the new
        samples, or the whole enlarged batch when ``appended_by_kernel``."""
        n = embeddings.shape[0]
        if not appended_by_kernel:
            rows = rows.to(embeddings.dtype)
            if self.detach_augmented:
                rows = rows.detach()
        if self.collect_stats:
            self.record_stats(
                n,
                torch.arange(n, device=embeddings.device),
                torch.ones(len(centers), dtype=torch.bool, device=centers.device),
                centers,
                src_rows,
                targets,
            )
        if self.centers.collect_stats:
            self.centers.num_centers = self.centers.num_batch_classes = len(centers)
        if appended_by_kernel:
            return rows, row_labels
        if append:
            return torch.cat([embeddings, rows]), torch.cat([labels, row_labels])
        return rows, row_labels, torch.arange(n, device=embeddings.device)

    def draw_targets(
        self,
        sources,
        candidate_mask,
        center_labels,
        source_keys=None,
        all_candidates=False,
    ):
        """(source positions, target rows): keyed by content when ``source_keys``
        are given, else drawn from the generator (or the global RNG).
        ``all_candidates`` says that ``candidate_mask`` is known to be all True."""
        num_rows = len(center_labels)
        if (
            source_keys is None
            and all_candidates
            and self.num_targets == 1
            and num_rows >= 2
            and len(sources) > 0
        ):
            return random_other_rows(sources, num_rows, self.generator)
        if source_keys is not None:
            seed = draw_seed(self.generator)

            def score_fn():
                return keyed_scores(source_keys, center_labels, seed)

        else:

            def score_fn():
                return random_scores(
                    len(sources), len(center_labels), sources.device, self.generator
                )

        return sample_target_rows(sources, candidate_mask, self.num_targets, score_fn)

    @staticmethod
    def directions(embeddings, name):
        """Unit directions and norms of the rows, in the compute dtype (float32 for
        half precision). Rows with NaN/inf, zero rows and rows whose norm overflows
        are refused (a NaN or inf anywhere in a row makes its norm NaN or inf)."""
        compute = BaseFeatureAugmenter.compute_dtype(embeddings)
        norms = torch.linalg.vector_norm(compute, dim=1, keepdim=True)
        if embeddings.shape[0] > 0:
            smallest, largest = torch.stack(torch.aminmax(norms)).tolist()
            if not math.isfinite(smallest + largest):
                check_finite(embeddings, name)
                raise ValueError(
                    f"{name} contains a vector too large to normalise in "
                    f"{compute.dtype} (its norm overflows)"
                )
            if not smallest > torch.finfo(compute.dtype).tiny:
                raise ValueError(
                    f"{name} contains a zero vector, which has no direction and "
                    "cannot be L2-normalised"
                )
        return compute / norms, norms

    def canonical_centers(self, embeddings, labels, keys):
        """Under torch.distributed, centres computed with the rows in an order given
        by their content (their keys), so that the float sums, hence the centres, are
        bit-identical however the batch is ordered (on every rank after a gather).
        Otherwise the batch order is used (results agree to rounding)."""
        if keys is None or not distributed.is_distributed():
            return self.centers(
                embeddings, labels, self.target_pool == "all", validate=False
            )
        order = torch.argsort(keys, stable=True)
        centers = self.centers(
            embeddings.index_select(0, order),
            labels.index_select(0, order),
            self.target_pool == "all",
            validate=False,
        )
        sample_rows = torch.empty_like(centers.sample_rows)
        sample_rows[order] = centers.sample_rows
        centers.sample_rows = sample_rows
        return centers

    def with_reference(self, embeddings, labels, directions, keys, ref_emb, ref_labels):
        """Directions, labels and keys of the batch plus the reference set."""
        check_embeddings(ref_emb, "ref_emb")
        check_labels(ref_labels, ref_emb.shape[0], embeddings.device, "ref_labels")
        if ref_emb.shape[1] != embeddings.shape[1] or ref_emb.dtype != embeddings.dtype:
            raise ValueError("ref_emb must have the embeddings' size and dtype")
        if not self.detach_centers:
            raise ValueError("ref_emb cannot be used with detach_centers=False")
        with torch.no_grad():
            ref_directions, _ = self.directions(ref_emb, "ref_emb")
        return (
            torch.cat([directions, ref_directions]),
            torch.cat([labels, ref_labels.to(labels.dtype)]),
            None if keys is None else torch.cat([keys, row_keys(ref_emb)]),
        )

    def batch_centers_with_gradient(self, embeddings, labels):
        """Batch centres through which gradients flow back to the embeddings."""
        embeddings = torch.nn.functional.normalize(
            self.compute_dtype(embeddings), dim=1
        )
        centers = self.centers(embeddings, labels, False, validate=False)
        unique_labels, inverse = torch.unique(labels, return_inverse=True)
        sums = torch.zeros(
            unique_labels.shape[0],
            embeddings.shape[1],
            dtype=embeddings.dtype,
            device=embeddings.device,
        ).index_add(0, inverse, embeddings)
        rows = torch.searchsorted(unique_labels, centers.labels)
        centers.centers = torch.nn.functional.normalize(sums[rows], dim=1)
        return centers

    def get_extra_state(self):
        """The generator's state, so that a resumed run draws the same targets."""
        return {
            "generator": None if self.generator is None else self.generator.get_state()
        }

    def set_extra_state(self, state):
        saved = (state or {}).get("generator")
        if saved is not None and self.generator is not None:
            self.generator.set_state(saved)

    @staticmethod
    def compute_dtype(x):
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    def record_stats(
        self, n, source_indices, candidate_mask, table, src_rows, dst_rows
    ):
        with torch.no_grad():
            src, dst = table[src_rows], table[dst_rows]
            self.num_augmented = source_indices.shape[0]
            self.num_unmoved_samples = n - int(torch.unique(source_indices).shape[0])
            self.num_target_classes = int(candidate_mask.sum())
            if source_indices.shape[0] > 0:
                cos = (src.float() * dst.float()).sum(dim=1).clamp(-1, 1)
                self.mean_center_angle = math.degrees(torch.acos(cos).mean().item())
            else:
                self.mean_center_angle = 0.0
