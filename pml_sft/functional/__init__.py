"""Functional layer: feature transforms applied row by row."""

from .rotation import orthogonal_unit, rotate, slerp
from .translation import translate

__all__ = ["rotate", "translate", "slerp", "orthogonal_unit"]
