import math
from typing import Dict, Optional, Tuple

import numpy
import torch

from ..utils import distributed
from ..utils.checks import as_number, checked_keywords
from ..utils.target_sampling import call_seed, checked_generator
from .base_augmenter import BaseAugmenter, GeneratorState


class EmbeddingMixup(GeneratorState, BaseAugmenter):
    """Embedding mixup (Metrix, Venkataramanan et al., ICLR 2022): each sample is
    mixed with a sample of another class of the batch, ``lam * a + (1 - lam) * b``
    on their unit directions (L2-normalised), with one ``lam ~ Beta(alpha, alpha)`` per call. A mixed
    row belongs to both classes: :class:`~pml_sft.EmbeddingMixupLoss` trains it as
    class a with weight ``lam`` and as class b with weight ``1 - lam``. Gradients
    flow to both sources.

    Returns from ``augmenter(embeddings, labels)``: the mixed rows, the first
    source's labels, and the first source's rows; :attr:`partner_labels` and
    :attr:`lam` hold the second source's labels and the weight.

    Args:
        alpha: the Beta distribution's parameter (1.0: ``lam`` uniform).
        generator: a ``torch.Generator`` for the partners and ``lam`` (its state is in
            ``state_dict``).
        collect_stats: PML's statistics option; ``num_augmented`` and ``lam`` are set
            at every call.
    """

    needs_own_wrapper = (
        "EmbeddingMixupLoss",
        "a mixed row belongs to two classes, weighted by lam, which only it trains",
    )
    # the wrapper calls the loss twice a step (one label each)
    unsupported_losses: Dict[str, str] = {
        "DynamicSoftMarginLoss": "it updates a histogram at every call, and mixup "
        "calls the loss twice a step, once per label"
    }

    @checked_keywords
    def __init__(
        self,
        alpha: float = 1.0,
        *,
        generator: Optional[torch.Generator] = None,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(collect_stats=collect_stats)
        self.alpha = as_number(
            alpha, "alpha", "a finite number > 0", lambda v: 0 < v < math.inf
        )
        self.generator = checked_generator(generator)
        self.lam = 1.0
        self.partner_labels = None
        self.add_to_recordable_attributes(name="alpha", is_stat=False)
        self.add_to_recordable_attributes(name="lam", is_stat=True)

    def check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if distributed.is_distributed():
            raise ValueError(
                "EmbeddingMixup draws its partners by row position, which differs "
                "between the ranks of DistributedLossWrapper: not yet supported under "
                "torch.distributed"
            )

    def augment(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unit, _ = self.directions(embeddings)
        with self.evaluation_keeps_generator():  # (an evaluation: as it was)
            seed = call_seed(unit.device, self.generator)
        n = len(labels)
        if n == 0:
            self.partner_labels, self.num_augmented = labels[:0], 0
            return embeddings[:0].detach(), labels[:0], labels[:0]
        lam = float(numpy.random.default_rng(seed).beta(self.alpha, self.alpha))
        # each row's partner: a random row of another class (none: left out)
        gen = torch.Generator().manual_seed(seed)
        scores = torch.rand(n, n, generator=gen).to(unit.device)
        other = labels.unsqueeze(0) != labels.unsqueeze(1)
        scores = torch.where(other, scores, torch.full_like(scores, -1.0))
        best, partner = scores.max(dim=1)
        rows = (best >= 0).nonzero(as_tuple=True)[0]
        partner = partner[rows]
        mixed = lam * unit[rows] + (1 - lam) * unit[partner]
        # a mix of near-opposite rows is near zero: its direction (and gradient)
        # would be noise, so it is left out, as Proxy Synthesis does
        norms = torch.linalg.vector_norm(mixed, dim=1, keepdim=True)
        keep = norms.squeeze(1) > torch.finfo(unit.dtype).eps ** 0.5
        if not bool(keep.all()):
            rows, partner, mixed, norms = (
                rows[keep],
                partner[keep],
                mixed[keep],
                norms[keep],
            )
        mixed = mixed / norms  # unit, as the family's
        self.lam = lam
        self.partner_labels = labels[partner]
        self.num_augmented = len(rows)
        return mixed.to(embeddings.dtype), labels[rows], rows
