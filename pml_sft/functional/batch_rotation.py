"""SFT on a batch in two compiled kernels: class means, rotation, and its backward.

The augmenters' general path runs the class centres, the target draw and the
rotation as separate modules, about 80 eager operations for a forward and backward
pass, which at training batch sizes (e.g. 128 x 512) cost more than the arithmetic.
For the default configuration (batch centres from the batch itself, one target per
sample, normalised embeddings) :func:`rotate_to_class_means` computes the same result
with one compiled kernel forward and one backward. It returns None where it does not
apply (no compiler, or a batch the general path must handle: zero or non-finite rows,
a class whose mean is zero, nearly antipodal centres), and the caller falls back.
"""

import torch

from .center_rotation import closed_form_fusable
from .compilation import run_compiled, wants_compiled_pipeline
from .rotation import ANTIPODAL_MARGIN


def _forward_fusable(x, inverse, targets, num_classes: int):
    """Unit rows, their class means (normalised) and the rotation of every row from
    its class's centre onto its target's centre, plus what validation needs."""
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
    # finite rows with nonzero norms, nonzero class means and denominators >= the
    # antipodal margin bound every term of ``out``: these four decide validity
    checks = torch.stack([norms.min(), norms.max(), center_norms.min(), denom.min()])
    return out, unit, norms, centers, denom, checks


def _backward_fusable(grad, unit, norms, centers, inverse, targets, denom):
    """(I - u u^T) R^T g / |x|: the inverse rotation (target -> source centre) of the
    incoming gradient, projected through the normalisation."""
    h = closed_form_fusable(grad, centers[targets], centers[inverse], denom)
    radial = (unit * h).sum(dim=1, keepdim=True)
    return (h - radial * unit) / norms


class _RotateToClassMeans(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, inverse, targets, num_classes):
        result = run_compiled(_forward_fusable, x, inverse, targets, num_classes)
        if result is None:
            return None, None, None
        out, unit, norms, centers, denom, checks = result
        ctx.save_for_backward(unit, norms, centers, inverse, targets, denom)
        ctx.mark_non_differentiable(centers, checks)
        return out, centers, checks

    @staticmethod
    def backward(ctx, grad, *unused):
        unit, norms, centers, inverse, targets, denom = ctx.saved_tensors
        args = (grad.contiguous(), unit, norms, centers, inverse, targets, denom)
        grad_x = run_compiled(_backward_fusable, *args)
        if grad_x is None:  # the compiler failed after the forward worked
            grad_x = _backward_fusable(*args)
        return grad_x, None, None, None


def rotate_to_class_means(x, inverse, targets, num_classes):
    """Rotate each row of ``x`` (N, D) from the normalised mean of the unit rows of its
    class, ``inverse[n]``, onto that of ``targets[n]`` (classes 0..num_classes-1,
    each with at least one row). Differentiable w.r.t. ``x`` with fixed centres.

    Returns (rotated unit rows (N, D), centres (num_classes, D)), or None when the
    compiled path is off or unavailable, or the batch needs the general path (a
    zero, non-finite or overflowing row, a class whose mean is zero, a nearly
    antipodal centre pair).
    """
    if not wants_compiled_pipeline():
        return None
    out, centers, checks = _RotateToClassMeans.apply(x, inverse, targets, num_classes)
    if out is None:
        return None
    smallest, largest, smallest_center, smallest_denom = checks.tolist()
    tiny = torch.finfo(x.dtype).tiny
    ok = (
        smallest > tiny
        and largest < float("inf")
        and smallest_center > torch.finfo(x.dtype).eps
        and smallest_denom >= ANTIPODAL_MARGIN
    )
    return (out, centers) if ok else None
