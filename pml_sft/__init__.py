"""pml-sft: Spherical Feature Transform and feature-space augmentation for
pytorch-metric-learning."""

from . import functional
from .augmenters import (
    BaseFeatureAugmenter,
    FeatureTranslation,
    SphericalFeatureTransform,
)
from .centers import (
    BaseClassCenters,
    BatchClassCenters,
    ClassCenters,
    MovingAverageClassCenters,
)
from .losses import FeatureTransformLoss, FeatureTranslationLoss, SFTLoss
from .utils import RecallAtK, training_iterations

__version__ = "0.2.0"

__all__ = [
    "functional",
    "BaseFeatureAugmenter",
    "SphericalFeatureTransform",
    "FeatureTranslation",
    "BaseClassCenters",
    "BatchClassCenters",
    "MovingAverageClassCenters",
    "ClassCenters",
    "FeatureTransformLoss",
    "SFTLoss",
    "FeatureTranslationLoss",
    "RecallAtK",
    "training_iterations",
]
