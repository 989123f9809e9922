from ..augmenters import DenselyAnchoredSampling
from .feature_transform_loss import FeatureTransformLoss


class DenselyAnchoredSamplingLoss(FeatureTransformLoss):
    """A PML loss trained on each batch plus its densely anchored copies
    (:class:`~pml_sft.DenselyAnchoredSampling`: ``num_produce`` detached, scaled and
    shifted copies of every embedding, labelled with its class):
    ``FeatureTransformLoss(loss, DenselyAnchoredSampling(num_classes,
    embedding_size, num_produce), miner, ...)`` in one line. For the augmenter's
    other options, build it and pass it to :class:`~pml_sft.FeatureTransformLoss`.

    Args:
        loss, miner, total_iterations, warmup_iterations, ramp_iterations,
            collect_stats: as in :class:`~pml_sft.FeatureTransformLoss` (without a
            schedule argument, augmentation starts once the loss stops falling; the
            augmenter's counts and memory start with it).
        num_classes, embedding_size: the sizes of the augmenter's memory; labels
            must lie in ``[0, num_classes)``.
        num_produce: copies per embedding (the official default: 3).
    """

    def __init__(
        self,
        loss,
        num_classes,
        embedding_size,
        miner=None,
        num_produce=3,
        total_iterations=None,
        warmup_iterations=None,
        ramp_iterations=None,
        collect_stats=None,
    ):
        augmenter = DenselyAnchoredSampling(
            num_classes, embedding_size, num_produce, collect_stats=collect_stats
        )
        super().__init__(
            loss,
            augmenter,
            miner,
            total_iterations=total_iterations,
            warmup_iterations=warmup_iterations,
            ramp_iterations=ramp_iterations,
            collect_stats=collect_stats,
        )
