import math
from typing import Optional, Tuple

import torch

from ..centers.base_class_centers import check_sizes, check_table
from ..utils import distributed
from ..utils.checks import as_count, as_number, checked_keywords
from ..utils.target_sampling import call_seed, checked_generator
from .base_augmenter import BaseAugmenter, GeneratorState


class ClassCovarianceSampling(GeneratorState, BaseAugmenter):
    """Class-covariance sampling (ISDA, Wang et al., NeurIPS 2019 / TPAMI 2021, and
    the intra-class augmentation of IAA): each class's mean and covariance of the
    unit directions are estimated online over training, and every sample of a
    class with an estimate gains ``num_samples`` new samples of its class,
    ``x + sqrt(strength) * L z`` with ``L L^T`` the class's covariance and
    ``z ~ N(0, I)``, L2-normalised: the translation baseline with each class's own
    spread. The estimate is detached; gradients flow through x.

    The estimate is exact over the samples seen (count-weighted, as ISDA's
    estimator), updated at each augmenting call in training mode with gradients
    enabled before the draw (an evaluation changes nothing), and kept in the
    ``state_dict``. It holds ``num_classes * embedding_size ** 2`` numbers.

    Args:
        num_classes: number of classes (labels 0 .. num_classes - 1).
        embedding_size: the embeddings' size.
        num_samples: new samples per sample (1).
        strength: the covariance's scale, ISDA's lambda (0.5).
        generator: a ``torch.Generator`` for the draws (its state is in
            ``state_dict``).
        collect_stats: PML's statistics option; ``num_augmented`` is set at every
            call.
    """

    # the estimate is updated here, unless a wrapper updates it at every training
    # call, warm-up included (ClassCovarianceSamplingLoss)
    updates_when_augmenting = True

    @checked_keywords
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        num_samples: int = 1,
        strength: float = 0.5,
        *,
        generator: Optional[torch.Generator] = None,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        num_classes, embedding_size = check_sizes(num_classes, embedding_size)
        self.num_samples = as_count(num_samples, "num_samples")
        self.strength = as_number(
            strength, "strength", "a finite number > 0", lambda v: 0 < v < math.inf
        )
        self.generator = checked_generator(generator)
        d = embedding_size
        # (an integer: .half() would stop a float count at 2048)
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("mean", torch.zeros(num_classes, d))
        self.register_buffer("covariance", torch.zeros(num_classes, d, d))
        self.add_to_recordable_attributes(
            list_of_names=["num_samples", "strength"], is_stat=False
        )

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        check_table(self, self.mean, embeddings, labels)
        if distributed.is_distributed():
            raise ValueError(
                "ClassCovarianceSampling draws by row position, which differs between "
                "the ranks of DistributedLossWrapper: not yet supported under "
                "torch.distributed"
            )

    @torch.no_grad()
    def update(self, unit: torch.Tensor, labels: torch.Tensor) -> None:
        """Merge the batch's per-class means and covariances into the estimate
        (the exact pooled mean and covariance of all samples seen)."""
        classes, inverse, counts = labels.unique(
            return_inverse=True, return_counts=True
        )
        onehot = torch.zeros(
            len(classes), len(labels), dtype=unit.dtype, device=unit.device
        )
        onehot[inverse, torch.arange(len(labels), device=unit.device)] = 1
        m = counts.to(unit.dtype)
        batch_mean = onehot @ unit / m.unsqueeze(1)
        centred = unit - batch_mean[inverse]
        weighted = onehot.unsqueeze(2) * centred.unsqueeze(0)  # (K, N, D)
        batch_cov = weighted.transpose(1, 2) @ centred / m.view(-1, 1, 1)
        n = self.count[classes].to(unit.dtype)
        total = n + m
        old_mean = self.mean[classes].to(unit.dtype)
        delta = batch_mean - old_mean
        mean = old_mean + delta * (m / total).unsqueeze(1)
        cov = (
            self.covariance[classes].to(unit.dtype) * (n / total).view(-1, 1, 1)
            + batch_cov * (m / total).view(-1, 1, 1)
            + (n * m / total**2).view(-1, 1, 1)
            * delta.unsqueeze(2)
            * delta.unsqueeze(1)
        )
        self.count[classes] = total.round().long()
        self.mean[classes] = mean.to(self.mean.dtype)
        self.covariance[classes] = cov.to(self.covariance.dtype)

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unit, _ = self.directions(embeddings)
        with self.evaluation_keeps_generator():  # (an evaluation: as it was)
            seed = call_seed(unit.device, self.generator)
        if self.updates_when_augmenting and self.training and torch.is_grad_enabled():
            self.update(unit.detach(), labels)  # (evaluations change nothing)
        rows = (self.count[labels] >= 2).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            self.num_augmented = 0
            return embeddings[:0].detach(), labels[:0], labels[:0]
        classes, inverse = labels[rows].unique(return_inverse=True)
        d = unit.shape[1]
        # a square root of each covariance: rank-deficient with few samples (and
        # not exactly PSD after float32 updates), so eigh, not Cholesky
        values, vectors = torch.linalg.eigh(self.covariance[classes].double())
        factor = (vectors * values.clamp_min(0).sqrt().unsqueeze(1)).to(unit.dtype)
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(len(rows), self.num_samples, d, generator=gen, dtype=unit.dtype)
        z = z.to(unit.device)
        noise = (factor[inverse] @ z.transpose(1, 2)).transpose(1, 2)  # (R, S, D)
        points = unit[rows].unsqueeze(1) + self.strength**0.5 * noise
        points = torch.nn.functional.normalize(points.reshape(-1, d), dim=1)
        sources = rows.repeat_interleave(self.num_samples)
        self.num_augmented = points.shape[0]
        return points.to(embeddings.dtype), labels[sources], sources
