"""Options beside the core: what the study ablated (benchmarks/results), kept for
reproducing it. None of them was above the baseline there."""

from .ablation_loss import OBJECTIVES, SYNTHETIC_ROLES, AblationLoss, restrict_roles

__all__ = ["AblationLoss", "restrict_roles", "OBJECTIVES", "SYNTHETIC_ROLES"]
