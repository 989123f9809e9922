"""Rotations between rows of a table of class centres.

Equivalent to ``rotate(x, centers[src_rows], centers[dst_rows])``; the centre inner
products come from the K x K Gram matrix, and when only ``x`` needs gradients the
backward pass is one inverse rotation (a single autograd node), which keeps the
augmenters cheap next to the loss they feed.
"""

import torch

from ..utils.checks import check_embeddings, check_finite, check_unit_rows
from .compilation import run_compiled, wants_compiled
from .rotation import ANTIPODAL_MARGIN, _compute_dtype, rotate


def closed_form_fusable(x, a, b, denom):
    """R x = x - k a + (2 <a,x> - k) b with k = <a+b, x> / denom, denom = 1 + <a,b>
    (made safe by the caller), for gathered centres ``a`` -> ``b``, in the simple
    ops a compiler fuses into one pass. Swapping ``a`` and ``b`` gives R^T x."""
    p = (a * x).sum(dim=1)
    k = (p + (b * x).sum(dim=1)) / denom
    return x - k.unsqueeze(1) * a + (2 * p - k).unsqueeze(1) * b


def _table_rotation_fusable(x, centers, gram, src_rows, dst_rows):
    """:func:`closed_form_fusable` with a = centers[src_rows], b = centers[dst_rows]
    and <a, b> from the Gram matrix (no gathered copies once compiled)."""
    denom = 1 + gram[src_rows, dst_rows]
    near = denom < ANTIPODAL_MARGIN
    safe = torch.where(near, torch.ones_like(denom), denom)
    return closed_form_fusable(x, centers[src_rows], centers[dst_rows], safe), near


def _eager_with_parts(x, centers, gram, src_rows, dst_rows):
    """The same in the cheapest eager ops, also returning the gathered centres and
    the safe denominators, which the backward pass reuses."""
    a = centers.index_select(0, src_rows)
    b = centers.index_select(0, dst_rows)
    denom = 1 + gram.reshape(-1).index_select(0, src_rows * gram.shape[0] + dst_rows)
    near = denom < ANTIPODAL_MARGIN
    denom = denom.masked_fill(near, 1.0)
    return _closed_form_gathered(x, a, b, denom), near, a, b, denom


def _closed_form_gathered(x, a, b, denom):
    """R x for gathered centres ``a`` -> ``b`` and denominators 1 + <a, b>."""
    p = torch.linalg.vecdot(a, x)
    k = (p + torch.linalg.vecdot(b, x)) / denom
    out = torch.addcmul(x, k.neg().unsqueeze(1), a)
    return out.addcmul_((2 * p - k).unsqueeze(1), b)


def _rotate_with_table(x, centers, gram, src_rows, dst_rows, parts=None):
    """R x; when ``parts`` is a list and the eager kernel ran without patching,
    the gathered centres and denominators are appended to it for the backward."""
    args = (x, centers, gram, src_rows, dst_rows)
    result = None
    if wants_compiled(x.numel()):  # None as well where compilation failed
        result = run_compiled(_table_rotation_fusable, *args)
    if result is not None:
        out, near = result
    else:
        out, near, a, b, denom = _eager_with_parts(*args)
        if parts is not None:
            parts.extend((a, b, denom))
    if near.any():  # nearly antipodal centres: the plane form of rotate()
        if parts is not None:
            parts.clear()
        rows = near.nonzero().squeeze(1)
        patched = rotate(
            x.index_select(0, rows),
            centers.index_select(0, src_rows.index_select(0, rows)),
            centers.index_select(0, dst_rows.index_select(0, rows)),
            check=False,
        )
        out = out.index_copy(0, rows, patched)
    return out


class _RotateDirections(torch.autograd.Function):
    """R (x / |x|) with fixed centres, in one autograd node. The directions and norms
    are computed by the caller (without gradient). The gradient w.r.t. x is the
    inverse rotation (b -> a) of the incoming gradient, projected through the
    normalisation: (I - u u^T) R^T g / |x| with u = x / |x|."""

    @staticmethod
    def forward(ctx, x, unit, norms, centers, gram, src_rows, dst_rows):
        parts = []
        out = _rotate_with_table(unit, centers, gram, src_rows, dst_rows, parts)
        # without patched rows, the inverse rotation reuses the gathered centres
        ctx.save_for_backward(unit, norms, centers, gram, src_rows, dst_rows, *parts)
        return out

    @staticmethod
    def backward(ctx, grad):
        unit, norms, centers, gram, src_rows, dst_rows, *parts = ctx.saved_tensors
        grad = grad.contiguous()
        if parts:
            a, b, denom = parts
            grad = _closed_form_gathered(grad, b, a, denom)
        else:
            grad = _rotate_with_table(grad, centers, gram, dst_rows, src_rows)
        if norms is not None:
            radial = torch.linalg.vecdot(unit, grad).unsqueeze(1)
            grad = torch.addcmul(grad, radial.neg(), unit).div_(norms)
        return grad, None, None, None, None, None, None


def rotate_directions_between_centers(x, unit, norms, centers, src_rows, dst_rows):
    """R (x / |x|) for callers that already have ``unit = x / |x|`` and ``norms``
    (computed without gradient, in the compute dtype; ``norms=None`` rotates x
    itself) and validated inputs: the fast path of
    :class:`~pml_sft.SphericalFeatureTransform`. Returns the compute dtype."""
    gram = centers @ centers.T
    if torch.is_grad_enabled() and centers.requires_grad:
        scaled = x if norms is None else x / norms
        return _rotate_with_table(scaled, centers, gram, src_rows, dst_rows)
    return _RotateDirections.apply(x, unit, norms, centers, gram, src_rows, dst_rows)


def _check_rows(rows, name, num_rows, num_centers, device):
    if not torch.is_tensor(rows) or rows.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer tensor of centre rows")
    if rows.shape != (num_rows,):
        raise ValueError(
            f"{name} must have shape ({num_rows},), got {tuple(rows.shape)}"
        )
    if rows.device != device:
        raise ValueError(f"{name} is on {rows.device} but x is on {device}")
    if num_rows and (rows.min().item() < 0 or rows.max().item() >= num_centers):
        raise ValueError(
            f"{name} must index rows of centers, i.e. lie in [0, {num_centers})"
        )


def rotate_between_centers(x, centers, src_rows, dst_rows, check=True, normalize=False):
    """Rotate row n of ``x`` by the minimal rotation carrying ``centers[src_rows[n]]``
    onto ``centers[dst_rows[n]]``.

    Same result as :func:`rotate` on gathered centres (antipodal and identical
    centres included), computed with matrix products against the (K, D) table, which
    is faster when K is small (e.g. the classes of a batch). When more than N
    centres are given, only the rows in use are kept first.

    Args:
        x: (N, D) vectors.
        centers: (K, D) unit vectors, same dtype and device as ``x``.
        src_rows, dst_rows: (N,) integer rows of ``centers``.
        check: validate values (finite ``x``, unit ``centers``, rows in range).
        normalize: L2-normalise the rows of ``x`` first (fused with the rotation;
            zero rows are the caller's to exclude).
    """
    check_embeddings(x, "x")
    check_embeddings(centers, "centers")
    if (
        centers.shape[1] != x.shape[1]
        or centers.dtype != x.dtype
        or centers.device != x.device
    ):
        raise ValueError(
            "centers must have x's embedding size, dtype and device; got "
            f"{tuple(centers.shape)} {centers.dtype} {centers.device} for x "
            f"{tuple(x.shape)} {x.dtype} {x.device}"
        )
    n = x.shape[0]
    if x.shape[1] < 2:
        raise ValueError(f"rotations need at least 2 dimensions, got D={x.shape[1]}")
    if check:
        _check_rows(src_rows, "src_rows", n, centers.shape[0], x.device)
        _check_rows(dst_rows, "dst_rows", n, centers.shape[0], x.device)
        check_finite(x, "x")
        check_finite(centers, "centers")
        check_unit_rows(centers, "centers")
    if n == 0:
        return x.clone()
    src_rows, dst_rows = src_rows.long(), dst_rows.long()
    if centers.shape[0] > n:
        used, inverse = torch.unique(
            torch.cat([src_rows, dst_rows]), return_inverse=True
        )
        centers = centers.index_select(0, used)
        src_rows, dst_rows = inverse[:n], inverse[n:]
    dtype = _compute_dtype(x.dtype)
    xc, cc = x.to(dtype), centers.to(dtype)
    norms = None
    unit = xc.detach()
    if normalize:
        norms = torch.linalg.vector_norm(unit, dim=1, keepdim=True)
        unit = unit / norms
    out = rotate_directions_between_centers(xc, unit, norms, cc, src_rows, dst_rows)
    return out.to(x.dtype)
