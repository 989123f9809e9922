"""Functional layer: feature transforms applied row by row."""

from .center_rotation import rotate_between_centers
from .compilation import compile_failure, get_compile_mode, set_compile_mode
from .rotation import orthogonal_unit, rotate
from .translation import translate

__all__ = [
    "rotate",
    "rotate_between_centers",
    "translate",
    "orthogonal_unit",
    "set_compile_mode",
    "get_compile_mode",
    "compile_failure",
]
