"""SFT on a batch in two compiled kernels: class means, rotation, and its backward.

The augmenters' general path runs the class centres, the target draw and the
rotation as separate modules, about 80 eager operations for a forward and backward
pass, which at training batch sizes (e.g. 128 x 512) cost more than the arithmetic.
For the default configuration (batch centres from the batch itself, one target per
sample, normalised embeddings) :func:`rotate_to_class_means` computes the same result
(targets, centres, rotated rows and their labels) with one compiled kernel forward
and one backward; with ``append=True`` the kernels also build the enlarged batch
(the input rows followed by the rotated ones, and their labels) and sum the
gradients of both copies, which saves the loss wrapper a concatenation and its
backward. At these sizes every operation saved counts: the per-call cost of an
operation is comparable to its arithmetic. Where it does not apply (no compiler, or
a batch the general path must handle: a class below the minimum size, zero or
non-finite rows, a class whose mean is zero, nearly antipodal centres) it says why,
and the caller falls back.
"""

import torch

from .center_rotation import closed_form_fusable
from .compilation import run_traced, wants_compiled_pipeline
from .rotation import ANTIPODAL_MARGIN


def _forward_fusable(x, inverse, offsets, class_labels, class_sizes, append: bool):
    """Targets (each row's class plus its offset, modulo the number of classes), the
    unit rows' class means (normalised) and the rotation of every row from its
    class's centre onto its target's centre, with the new rows' labels (after the
    rows of ``x`` and their labels when ``append``), plus what validation needs."""
    num_classes = class_labels.shape[0]
    targets = (inverse + offsets) % num_classes
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    unit = x / norms
    sums = torch.zeros(
        (num_classes, x.shape[1]), dtype=x.dtype, device=x.device
    ).index_add(0, inverse, unit)
    center_norms = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
    centers = sums / center_norms
    a = centers[inverse]
    b = centers[targets]
    denom = 1 + (a * b).sum(dim=1)
    out = closed_form_fusable(unit, a, b, denom)
    out_labels = class_labels[targets]
    if append:
        out = torch.cat([x, out])
        out_labels = torch.cat([class_labels[inverse], out_labels])
    # finite rows with nonzero norms, nonzero class means and denominators >= the
    # antipodal margin bound every term of ``out``: these four decide validity; the
    # smallest class decides whether the batch is eligible
    checks = torch.stack(
        [
            norms.min(),
            norms.max(),
            center_norms.min(),
            denom.min(),
            class_sizes.min().to(x.dtype),
        ]
    )
    return out, out_labels, norms, centers, targets, checks


def _backward_fusable(grad, x, norms, centers, inverse, targets, append: bool):
    """(I - u u^T) R^T g / |x| with u = x / |x|: the inverse rotation (target ->
    source centre) of the incoming gradient, projected through the normalisation;
    when ``append``, ``grad`` covers the enlarged batch and the gradient of the
    copied rows is added."""
    n = x.shape[0]
    rotated_grad = grad[n:] if append else grad
    a = centers[inverse]
    b = centers[targets]
    denom = 1 + (a * b).sum(dim=1)
    h = closed_form_fusable(rotated_grad, b, a, denom)
    unit = x / norms
    radial = (unit * h).sum(dim=1, keepdim=True)
    grad_x = (h - radial * unit) / norms
    return grad[:n] + grad_x if append else grad_x


class _RotateToClassMeans(torch.autograd.Function):
    """The only differentiable output is the rotated rows; the others (labels,
    centres, targets, checks) go into the list ``extras`` (fewer outputs for
    autograd to wrap)."""

    @staticmethod
    def forward(ctx, x, inverse, offsets, class_labels, class_sizes, append, extras):
        result = run_traced(
            _forward_fusable, x, inverse, offsets, class_labels, class_sizes, append
        )
        if result is None:
            return None
        out, out_labels, norms, centers, targets, checks = result
        ctx.save_for_backward(x, norms, centers, inverse, targets)
        ctx.append = append
        extras.extend((out_labels, centers, targets, checks))
        return out

    @staticmethod
    def backward(ctx, grad):
        args = (grad.contiguous(), *ctx.saved_tensors, ctx.append)
        grad_x = None
        if not torch.is_grad_enabled():  # else (create_graph) autograd records it
            grad_x = run_traced(_backward_fusable, *args)
        if grad_x is None:  # the compiler failed after the forward worked
            grad_x = _backward_fusable(*args)
        return grad_x, None, None, None, None, None, None


# why rotate_to_class_means left a batch to the general path
UNAVAILABLE = "compiled path off or unavailable"
SMALL_CLASS = "a class below the minimum size"
INVALID_VALUES = (
    "zero, non-finite or overflowing rows, a zero mean or antipodal centres"
)


def rotate_to_class_means(
    x, inverse, offsets, class_labels, class_sizes, min_class_size=1, append=False
):
    """Rotate each row of ``x`` (N, D) from the normalised mean of the unit rows of
    its class, ``inverse[n]`` (a row of ``class_labels``; ``class_sizes`` counts the
    rows of each class), onto that of its target class ``(inverse[n] + offsets[n])
    % K``, K = ``len(class_labels)`` >= 2. Differentiable w.r.t. ``x`` with fixed
    centres.

    Returns (rotated unit rows (N, D), their labels ``class_labels[targets]``,
    centres (K, D), targets (N,)); with ``append`` the first two are the enlarged
    batch: ``x`` followed by the rotated rows (2N, D) and the labels of both. Where
    the batch needs the general path it returns the reason instead, a str:
    ``UNAVAILABLE`` (compiled path off or no compiler), ``SMALL_CLASS`` (a class
    with fewer than ``min_class_size`` rows) or ``INVALID_VALUES`` (a zero,
    non-finite or overflowing row, a class whose mean is zero, a nearly antipodal
    centre pair).
    """
    if not wants_compiled_pipeline():
        return UNAVAILABLE
    extras = []
    out = _RotateToClassMeans.apply(
        x, inverse, offsets, class_labels, class_sizes, append, extras
    )
    if out is None:
        return UNAVAILABLE
    out_labels, centers, targets, checks = extras
    smallest, largest, smallest_center, smallest_denom, smallest_class = checks.tolist()
    if smallest_class < min_class_size:
        return SMALL_CLASS
    finfo = torch.finfo(x.dtype)
    if not (
        smallest > finfo.tiny
        and largest < float("inf")
        and smallest_center > finfo.eps
        and smallest_denom >= ANTIPODAL_MARGIN
    ):
        return INVALID_VALUES
    return out, out_labels, centers, targets
