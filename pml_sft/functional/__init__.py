"""Functional layer: feature transforms applied row by row."""

from .rotation import rotate, slerp
from .translation import translate

__all__ = ["rotate", "translate", "slerp"]
