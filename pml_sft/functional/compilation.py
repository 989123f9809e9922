"""Optional ``torch.compile`` fusion for the functional layer.

The closed-form rotation is a handful of row-wise reductions followed by two
``addcmul`` passes. In eager PyTorch every step is a separate pass over memory; a
compiled kernel fuses them. Compilation is optional: where ``torch.compile`` is
missing or fails (no C++ compiler, unsupported Python, ...) the first failure emits
one ``RuntimeWarning`` and every later call uses the eager kernel.

Modes (``set_compile_mode`` or the ``PML_SFT_COMPILE`` environment variable):

* ``"auto"`` (default): compile single kernels (``rotate``, rotations between
  centres) for inputs of at least ``AUTO_MIN_NUMEL`` elements, where fusion pays for
  itself (about 4x on a 4096 x 512 rotation on one CPU thread), and always compile
  the SFT augmenter's fused batch pipeline (centres, rotation and its backward in two
  kernels), which removes most of the eager operations at training batch sizes.
  The first compiled call takes seconds.
* ``"always"``: compile whenever possible.
* ``"never"``: always eager.

The batch pipeline runs once per training step on small tensors, where the per-call
cost of ``torch.compile`` (guard evaluation and its runtime wrappers, about as much
as the arithmetic at 128 x 512) matters. :func:`run_traced` therefore compiles it
for each input layout it sees (shapes, strides, dtypes, devices) and calls the
compiled kernel straight from a dictionary, up to ``TRACED_LAYOUTS`` layouts per
function; past that, and wherever tracing or compiling that way fails, it uses
``torch.compile`` (:func:`run_compiled`; static shapes first, dynamic ones once a
second shape appears).
"""

import os
import warnings

import torch

MODES = ("auto", "always", "never")
AUTO_MIN_NUMEL = 1 << 20
TRACED_LAYOUTS = 8

_state = {
    "mode": os.environ.get("PML_SFT_COMPILE", "auto"),
    "failed": None,
    "compiled": {},
    "traced": {},
    "tracing_failed": None,
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
    _state["tracing_failed"] = None
    _state["compiled"].clear()
    _state["traced"].clear()


def _compile(fn):
    return torch.compile(fn, dynamic=None)


def wants_compiled(numel):
    mode = get_compile_mode()
    if mode == "never" or _state["failed"] is not None:
        return False
    return mode == "always" or numel >= AUTO_MIN_NUMEL


def wants_compiled_pipeline():
    """Whether fused pipelines (e.g. the SFT augmenter's batch path, where compiling
    pays at training batch sizes too) should be compiled: in "auto" and "always"."""
    return get_compile_mode() != "never" and _state["failed"] is None


def run_compiled(fn, *args):
    """``torch.compile(fn)(*args)``, or None where compilation is unavailable (the
    first failure warns once and disables compilation, as in :func:`run_kernel`)."""
    try:
        compiled = _state["compiled"].get(fn)
        if compiled is None:
            compiled = _state["compiled"][fn] = _compile(fn)
        return compiled(*args)
    except Exception as e:  # any compiler failure: fall back for the whole process
        _disable(e)
        return None


def run_traced(fn, *args):
    """``fn(*args)`` through a kernel compiled for exactly this input layout, or None
    where compilation is unavailable (as :func:`run_compiled`).

    Tensor arguments are the kernel's inputs; the others (e.g. flags) are constants
    of the trace and must be hashable. ``fn`` must be a pure function of its inputs
    whose operations depend on shapes only, never on tensor values (the trace
    records the operations once)."""
    if _state["tracing_failed"] is not None:
        return run_compiled(fn, *args)
    key = (fn,) + tuple(
        (a.dtype, a.device, a.shape, a.stride()) if torch.is_tensor(a) else a
        for a in args
    )
    kernel = _state["traced"].get(key)
    if kernel is None:
        if sum(k[0] is fn for k in _state["traced"]) >= TRACED_LAYOUTS:
            return run_compiled(fn, *args)
        try:
            kernel = _trace_and_compile(fn, args)
        except Exception as e:  # this way of compiling is unavailable: use Dynamo
            _state["tracing_failed"] = e
            return run_compiled(fn, *args)
        _state["traced"][key] = kernel
    return kernel(*[a for a in args if torch.is_tensor(a)])


def _trace_and_compile(fn, args):
    """An aten graph of ``fn`` on these inputs (``make_fx``), compiled by Inductor."""
    import torch._inductor
    from torch.fx.experimental.proxy_tensor import make_fx

    def with_constants(*tensors):
        it = iter(tensors)
        return fn(*[next(it) if torch.is_tensor(a) else a for a in args])

    tensors = [a.detach() for a in args if torch.is_tensor(a)]
    with torch.no_grad():
        graph = make_fx(with_constants)(*tensors)
        kernel = torch._inductor.compile(graph, tensors)
        kernel(*tensors)  # fails here rather than in training if it cannot run
    return kernel


def _disable(e):
    _state["failed"] = e
    warnings.warn(
        f"pml_sft: torch.compile is unavailable here ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); using the eager kernels",
        RuntimeWarning,
        stacklevel=4,
    )


def run_kernel(fusable_fn, eager_fn, numel, *args):
    """Run ``torch.compile(fusable_fn)`` when wanted and possible, else ``eager_fn``.

    Both functions compute the same thing; ``fusable_fn`` is written in the simple
    elementwise ops a compiler fuses best, ``eager_fn`` in the ops that are fastest
    one at a time.
    """
    if wants_compiled(numel):
        result = run_compiled(fusable_fn, *args)
        if result is not None:
            return result
    return eager_fn(*args)
