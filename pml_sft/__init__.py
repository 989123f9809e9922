"""pml-sft: Spherical Feature Transform and feature-space augmentation for
pytorch-metric-learning."""

from . import contrib, functional
from .augmenters import (
    BaseAugmenter,
    BaseFeatureAugmenter,
    DenselyAnchoredSampling,
    EmbeddingExpansion,
    FeatureTranslation,
    ProxySynthesis,
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
    DenselyAnchoredSamplingLoss,
    EmbeddingExpansionLoss,
    FeatureTransformLoss,
    FeatureTranslationLoss,
    ProxySynthesisLoss,
    SFTLoss,
    SymmetricalSynthesisLoss,
)
from .utils import RecallAtK, training_iterations

__version__ = "0.2.0"

__all__ = [
    "contrib",
    "functional",
    "BaseAugmenter",
    "BaseFeatureAugmenter",
    "EmbeddingExpansion",
    "SymmetricalSynthesis",
    "ProxySynthesis",
    "DenselyAnchoredSampling",
    "SphericalFeatureTransform",
    "FeatureTranslation",
    "BaseClassCenters",
    "BatchClassCenters",
    "MovingAverageClassCenters",
    "ClassCenters",
    "FeatureTransformLoss",
    "SFTLoss",
    "FeatureTranslationLoss",
    "EmbeddingExpansionLoss",
    "SymmetricalSynthesisLoss",
    "ProxySynthesisLoss",
    "DenselyAnchoredSamplingLoss",
    "EmojiDataset",
    "IconThemesDataset",
    "RecallAtK",
    "training_iterations",
]
