from typing import Optional

import torch

from ..centers import BaseClassCenters
from ..upstream.sft_loss import _translate, _unit
from .base_feature_augmenter import BaseFeatureAugmenter, ablation_checked


class FeatureTranslation(BaseFeatureAugmenter):
    """Feature translation (feature transfer, Yin et al., CVPR 2019), the baseline of SFT.

    The direction u of each embedding x of class i becomes ``u - c_i + c_j`` for a
    target class j, labelled j; with ``renormalize`` (default) the result has the
    norm of x, like SFT's rotation. It assumes every class has the same covariance in
    Euclidean space.

    Args:
        renormalize: give translated features the norm of their source (on the unit
            sphere for unit embeddings); False returns ``|x| (u - c_i + c_j)``.
        centers, num_targets, target_pool, generator, keyed_draws, collect_stats:
            the options of :class:`BaseFeatureAugmenter` (by name).
    """

    @ablation_checked
    def __init__(
        self,
        renormalize: bool = True,
        *,
        centers: Optional[BaseClassCenters] = None,
        num_targets: int = 1,
        target_pool: str = "batch",
        generator: Optional[torch.Generator] = None,
        keyed_draws: Optional[bool] = None,
        collect_stats: Optional[bool] = None,
    ):
        super().__init__(
            centers,
            num_targets,
            target_pool,
            generator,
            keyed_draws,
            collect_stats=collect_stats,
        )
        self.renormalize = renormalize
        self.add_to_recordable_attributes(name="renormalize", is_stat=False)

    def move(
        self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> torch.Tensor:
        if self.renormalize:
            return _translate(x, src, dst)
        unit, norms = _unit(x)
        return (unit - src + dst) * norms
