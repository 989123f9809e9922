"""Optional ``torch.compile`` fusion for the functional layer.

The closed-form rotation is a handful of row-wise reductions followed by two
``addcmul`` passes. In eager PyTorch every step is a separate pass over memory; a
compiled kernel fuses them. Compilation is optional: where ``torch.compile`` is
missing or fails (no C++ compiler, unsupported Python, ...) the first failure emits
one ``RuntimeWarning`` and every later call uses the eager kernel.

Modes (``set_compile_mode`` or the ``PML_SFT_COMPILE`` environment variable):

* ``"auto"`` (default): compile for inputs of at least ``AUTO_MIN_NUMEL`` elements,
  where fusion pays for itself (about 4x on a 4096 x 512 rotation on one CPU
  thread); training-sized batches stay eager, where the gain measured here was
  about 5% of the transform's time, not worth a compile delay at start-up.
  The first compiled call takes seconds.
* ``"always"``: compile whenever possible.
* ``"never"``: always eager.
"""

import os
import warnings

import torch

MODES = ("auto", "always", "never")
AUTO_MIN_NUMEL = 1 << 20

_state = {
    "mode": os.environ.get("PML_SFT_COMPILE", "auto"),
    "failed": None,
    "compiled": {},
}


def set_compile_mode(mode):
    """Choose when the functional layer uses ``torch.compile`` ("auto", "always", "never")."""
    if mode not in MODES:
        raise ValueError(f"compile mode must be one of {MODES}, got {mode!r}")
    _state["mode"] = mode


def get_compile_mode():
    mode = _state["mode"]
    if mode not in MODES:
        raise ValueError(f"PML_SFT_COMPILE must be one of {MODES}, got {mode!r}")
    return mode


def compile_failure():
    """The error that disabled compilation in this process, or None."""
    return _state["failed"]


def reset_compile_state():
    """Forget compiled kernels and earlier failures (mainly for tests)."""
    _state["failed"] = None
    _state["compiled"].clear()


def _compile(fn):
    return torch.compile(fn, dynamic=True)


def wants_compiled(numel):
    mode = get_compile_mode()
    if mode == "never" or _state["failed"] is not None:
        return False
    return mode == "always" or numel >= AUTO_MIN_NUMEL


def run_kernel(fusable_fn, eager_fn, numel, *args):
    """Run ``torch.compile(fusable_fn)`` when wanted and possible, else ``eager_fn``.

    Both functions compute the same thing; ``fusable_fn`` is written in the simple
    elementwise ops a compiler fuses best, ``eager_fn`` in the ops that are fastest
    one at a time.
    """
    if not wants_compiled(numel):
        return eager_fn(*args)
    try:
        compiled = _state["compiled"].get(fusable_fn)
        if compiled is None:
            compiled = _state["compiled"][fusable_fn] = _compile(fusable_fn)
        return compiled(*args)
    except Exception as e:  # any compiler failure: fall back for the whole process
        _state["failed"] = e
        warnings.warn(
            f"pml_sft: torch.compile is unavailable here ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); using the eager kernels",
            RuntimeWarning,
            stacklevel=3,
        )
        return eager_fn(*args)
