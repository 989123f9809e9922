from ..augmenters import EmbeddingExpansion
from .feature_transform_loss import FeatureTransformLoss


class EmbeddingExpansionLoss(FeatureTransformLoss):
    """A PML loss trained on each batch plus its Embedding Expansion points
    (:class:`~pml_sft.EmbeddingExpansion`: ``num_points`` points between every
    same-class pair, labelled with the class): ``FeatureTransformLoss(loss,
    EmbeddingExpansion(num_points), miner, ...)`` in one line.

    Args:
        loss, miner, total_iterations, warmup_iterations, ramp_iterations,
            collect_stats: as in :class:`~pml_sft.FeatureTransformLoss` (without a
            schedule argument, augmentation starts once the loss stops falling).
        num_points: points per pair (the paper's default: 2).
    """

    def __init__(
        self,
        loss,
        miner=None,
        num_points=2,
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        collect_stats=None,
    ):
        super().__init__(
            loss,
            EmbeddingExpansion(num_points, collect_stats=collect_stats),
            miner,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
