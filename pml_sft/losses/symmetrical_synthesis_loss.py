from ..augmenters import SymmetricalSynthesis
from .feature_transform_loss import FeatureTransformLoss


class SymmetricalSynthesisLoss(FeatureTransformLoss):
    """A PML loss trained on each batch plus its symmetrical synthetic points
    (:class:`~pml_sft.SymmetricalSynthesis`: each member of every same-class pair
    reflected about the other, labelled with the class):
    ``FeatureTransformLoss(loss, SymmetricalSynthesis(), miner, ...)`` in one line.

    Args:
        loss, miner, total_iterations, warmup_iterations, ramp_iterations,
            collect_stats: as in :class:`~pml_sft.FeatureTransformLoss` (without a
            schedule argument, augmentation starts once the loss stops falling).
    """

    def __init__(
        self,
        loss,
        miner=None,
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        collect_stats=None,
    ):
        super().__init__(
            loss,
            SymmetricalSynthesis(collect_stats=collect_stats),
            miner,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
