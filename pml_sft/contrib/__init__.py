"""Options beside the core: what the study ablated (benchmarks/results), kept for
reproducing it. None of them was above the baseline there."""

from .ablation_augmenters import (
    AblationFeatureTranslation,
    AblationOptions,
    AblationSphericalFeatureTransform,
)
from .ablation_loss import OBJECTIVES, SYNTHETIC_ROLES, AblationLoss, restrict_roles
from .dataset_class_centers import DatasetClassCenters
from .proxy_class_centers import ProxyClassCenters

__all__ = [
    "AblationLoss",
    "AblationOptions",
    "AblationSphericalFeatureTransform",
    "AblationFeatureTranslation",
    "DatasetClassCenters",
    "ProxyClassCenters",
    "restrict_roles",
    "OBJECTIVES",
    "SYNTHETIC_ROLES",
]
