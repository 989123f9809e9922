"""pml-sft: Spherical Feature Transform and feature-space augmentation for
pytorch-metric-learning."""

from . import contrib, functional
from .augmenters import (
    BaseAugmenter,
    BaseFeatureAugmenter,
    ClassCovarianceSampling,
    DenselyAnchoredSampling,
    EmbeddingExpansion,
    EmbeddingMixup,
    FeatureTranslation,
    ProxySynthesis,
    SphericalEmbeddingExpansion,
    SphericalFeatureTransform,
    SymmetricalSynthesis,
)
from .centers import (
    BaseClassCenters,
    BatchClassCenters,
    ClassCenters,
    MovingAverageClassCenters,
)
from .datasets import EmojiDataset, IconThemesDataset
from .losses import (
    ClassCovarianceSamplingLoss,
    DenselyAnchoredSamplingLoss,
    EmbeddingExpansionLoss,
    EmbeddingMixupLoss,
    FeatureTransformLoss,
    FeatureTranslationLoss,
    ProxySynthesisLoss,
    SFTLoss,
    SphericalEmbeddingExpansionLoss,
    SymmetricalSynthesisLoss,
)
from .utils import RecallAtK, training_iterations

__version__ = "0.2.0"

MOVED_TO_CONTRIB = ("DatasetClassCenters", "ProxyClassCenters")


def __getattr__(name):
    if name in MOVED_TO_CONTRIB:
        raise AttributeError(
            f"pml_sft.{name} moved to pml_sft.contrib.{name} (beside the core: the "
            "study found it no better than the batch centres)"
        )
    raise AttributeError(f"module 'pml_sft' has no attribute {name!r}")


__all__ = [
    "contrib",
    "functional",
    "BaseAugmenter",
    "BaseFeatureAugmenter",
    "ClassCovarianceSampling",
    "EmbeddingExpansion",
    "EmbeddingMixup",
    "SymmetricalSynthesis",
    "ProxySynthesis",
    "DenselyAnchoredSampling",
    "SphericalEmbeddingExpansion",
    "SphericalFeatureTransform",
    "FeatureTranslation",
    "BaseClassCenters",
    "BatchClassCenters",
    "MovingAverageClassCenters",
    "ClassCenters",
    "FeatureTransformLoss",
    "ClassCovarianceSamplingLoss",
    "SFTLoss",
    "FeatureTranslationLoss",
    "EmbeddingExpansionLoss",
    "EmbeddingMixupLoss",
    "SymmetricalSynthesisLoss",
    "ProxySynthesisLoss",
    "DenselyAnchoredSamplingLoss",
    "SphericalEmbeddingExpansionLoss",
    "EmojiDataset",
    "IconThemesDataset",
    "RecallAtK",
    "training_iterations",
]
