"""Input validation shared by the functional layer, centre estimators and augmenters.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape or values) with a message that names the argument and the problem.
"""

import difflib
import functools
import inspect
import operator
from typing import Any, Callable, Dict, Optional, Sequence, TypeVar, cast

import torch

Init = TypeVar("Init", bound=Callable[..., None])

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x, name):
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_embeddings(x, name="embeddings"):
    """A 2-D floating-point tensor of shape (N, D)."""
    check_tensor(x, name)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor "
            f"(float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError(f"{name} are on the meta device, so they hold no values")


def check_labels(labels, num_rows, name="labels"):
    """A 1-D integer tensor with one label per embedding."""
    if labels is None:
        raise ValueError(
            f"{name} are required: feature transforms move samples between classes"
        )
    check_tensor(labels, name)
    if labels.device.type == "meta":
        raise ValueError(f"{name} are on the meta device, so they hold no values")
    if (
        labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(
            f"{name} must have shape (N,), got shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != num_rows:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but there are {num_rows} embeddings"
        )


def check_feature_size(x, name="embeddings"):
    """At least 2 dimensions: moving a feature between class centres on the sphere
    needs a plane (for D = 1 the only directions are +1 and -1)."""
    if x.shape[1] < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions for feature transforms, got "
            f"D={x.shape[1]}"
        )


def check_batch(embeddings, labels):
    """A batch to augment: (N, D) floating-point embeddings with D >= 2 and one
    integer label per row."""
    check_embeddings(embeddings)
    check_labels(labels, embeddings.shape[0])
    check_feature_size(embeddings)


def check_same_layout(reference, reference_name, other, other_name):
    """Same shape, dtype and device as ``reference``."""
    check_tensor(other, other_name)
    if other.shape != reference.shape:
        raise ValueError(
            f"{other_name} has shape {tuple(other.shape)} but {reference_name} "
            f"has shape {tuple(reference.shape)}"
        )
    if other.dtype != reference.dtype:
        raise TypeError(
            f"{other_name} has dtype {other.dtype} but {reference_name} has dtype "
            f"{reference.dtype}; convert one of them first"
        )
    if other.device != reference.device:
        raise ValueError(
            f"{other_name} is on {other.device} but {reference_name} is on "
            f"{reference.device}; move them to the same device"
        )


def all_finite(x):
    """True when every element of ``x`` is finite.

    Summing first is ~50x cheaper than ``torch.isfinite(x).all()`` on the CPU; a
    non-finite or overflowing sum falls back to the exact elementwise test.
    """
    if x.numel() == 0:
        return True
    acc_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if bool(torch.isfinite(x.sum(dtype=acc_dtype))):
        return True
    return bool(torch.isfinite(x).all())


def check_finite(x, name):
    if not all_finite(x):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains NaN or inf values ({bad} of them)")


def check_directions(x, name):
    """Refuses rows with NaN/inf, and rows without a direction to rotate or
    translate: zero rows, and rows whose norm overflows in the compute dtype
    (float32 for half precision). Checked at every call (one host sync for the
    three), so that a run fails at its first step, not when augmentation starts."""
    if x.shape[0] == 0:
        return
    x = x.detach()
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    norms = torch.linalg.vector_norm(x.to(compute), dim=1)
    zero = ~(x != 0).any(dim=1)
    flags = [~torch.isfinite(x).all(), zero.any(), torch.isinf(norms).any()]
    not_finite, any_zero, overflow = torch.stack(flags).tolist()
    if not_finite:
        check_finite(x, name)
    if any_zero:
        raise ValueError(
            f"{name} contains a zero vector, which has no direction and cannot be "
            "L2-normalised"
        )
    if overflow:
        raise ValueError(
            f"{name} contains a vector too large to normalise in {compute} (its "
            "norm overflows)"
        )


def checked_keywords(
    init: Optional[Init] = None, *, moved: Optional[Dict[str, str]] = None
) -> Any:
    """Decorates a constructor that takes its options explicitly: a keyword argument
    it does not take raises Python's TypeError, but naming the class called
    (``type(self)``: a subclass that inherits the constructor, also on Python 3.9)
    and the closest option it takes, or, for an option of ``moved``, where it went.
    Use as ``@checked_keywords`` or ``@checked_keywords(moved={...})``."""
    if init is None:
        return lambda f: checked_keywords(f, moved=moved)
    params = list(inspect.signature(init).parameters.values())[1:]
    names = [
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if len(names) != len(params):
        raise TypeError(f"{init.__qualname__} must take its options by name")

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in names:
                raise unexpected_keyword(type(self), name, names, moved)
        init(self, *args, **kwargs)

    return cast(Init, checked)


def unexpected_keyword(
    cls: type,
    name: str,
    names: Sequence[str],
    moved: Optional[Dict[str, str]] = None,
) -> TypeError:
    """Python's TypeError for an unknown keyword argument of ``cls``'s constructor,
    with where it went (``moved``) or the closest of ``names`` it takes."""
    message = f"{cls.__name__}.__init__() got an unexpected keyword argument {name!r}"
    if moved and name in moved:
        return TypeError(f"{message}: it belongs to {moved[name]}")
    close = difflib.get_close_matches(name, names, n=1)
    return TypeError(message + (f"; did you mean {close[0]!r}?" if close else ""))


def unit_tolerance(dtype):
    """How far from 1 the norm of a 'unit' vector of this dtype may be."""
    return max(torch.finfo(dtype).eps ** 0.5, 1e-6)


def as_count(value, name, minimum=1):
    """``value`` as a Python int if it is integer-like (int, numpy integer, 0-d
    integer tensor or array; not a bool) and at least ``minimum``; else a
    ValueError."""
    shape = getattr(value, "shape", ())
    kind = str(getattr(value, "dtype", ""))
    try:
        count = (
            None
            if isinstance(value, bool) or shape != () or "bool" in kind
            else operator.index(value)
        )
    except TypeError:
        count = None
    if count is None or count < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return count


def as_number(
    value: Any, name: str, requirement: str, accept: Callable[[float], bool]
) -> float:
    """``value`` as a float if it is a real number (an int or a float, not a bool)
    that ``accept`` takes; else a ValueError: "``name`` must be ``requirement``"."""
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and accept(float(value))
    ):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return float(value)
