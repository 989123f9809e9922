"""Minimal rotations on the hypersphere, applied row by row without D x D matrices."""

import torch

from ..utils.checks import check_embeddings, check_same_layout, unit_tolerance
from .compilation import run_kernel

# Rows with 1 + <src, dst> below this use the plane-vector form: the closed form
# divides by 1 + <src, dst> and loses accuracy as the centres become antipodal.
ANTIPODAL_MARGIN = 0.1


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rotate_closed_form(x, a, b):
    """R x = x - (<a+b, x> / (1 + <a, b>)) (a + b) + 2 <a, x> b, for every row.

    Returns the rotated rows (in the compute dtype), <a, b> per row, and the
    quantities validation needs: the largest |norm - 1| of a and of b, and whether
    every row-wise reduction is finite (a NaN/inf anywhere in x, a or b reaches them).
    """
    dtype = _compute_dtype(x.dtype)
    x, a, b = x.to(dtype), a.to(dtype), b.to(dtype)
    p = (a * x).sum(dim=1)
    q = (b * x).sum(dim=1)
    c = (a * b).sum(dim=1)
    near_antipodal = (1 + c) < ANTIPODAL_MARGIN
    k = (p + q) / torch.where(near_antipodal, torch.ones_like(c), 1 + c)
    out = x - k.unsqueeze(1) * a + (2 * p - k).unsqueeze(1) * b
    a_err = ((a * a).sum(dim=1).sqrt() - 1).abs().amax()
    b_err = ((b * b).sum(dim=1).sqrt() - 1).abs().amax()
    finite = torch.isfinite(p + q + c).all()
    return out, c, a_err, b_err, finite


def _rotate_closed_form_eager(x, a, b):
    # The same computation with the cheapest eager ops (fewer passes over memory).
    dtype = _compute_dtype(x.dtype)
    x, a, b = x.to(dtype), a.to(dtype), b.to(dtype)
    p = torch.linalg.vecdot(a, x)
    q = torch.linalg.vecdot(b, x)
    c = torch.linalg.vecdot(a, b)
    near_antipodal = (1 + c) < ANTIPODAL_MARGIN
    k = (p + q) / torch.where(near_antipodal, torch.ones_like(c), 1 + c)
    out = torch.addcmul(x, (-k).unsqueeze(1), a).addcmul_((2 * p - k).unsqueeze(1), b)
    a_err = (torch.linalg.vector_norm(a, dim=1) - 1).abs().amax()
    b_err = (torch.linalg.vector_norm(b, dim=1) - 1).abs().amax()
    finite = torch.isfinite(p + q + c).all()
    return out, c, a_err, b_err, finite


def orthogonal_unit(a):
    """A unit vector orthogonal to each (unit) row of ``a``: e_k minus its projection
    on a, where k is the coordinate in which a is smallest (so the result is never
    near zero for D >= 2)."""
    k = a.abs().argmin(dim=1, keepdim=True)
    e = torch.zeros_like(a).scatter_(1, k, 1.0)
    u = e - a.gather(1, k) * a
    return u / torch.linalg.vector_norm(u, dim=1, keepdim=True)


def _rotate_plane_form(x, a, b):
    """R x = x + (cos t - 1)(<a,x> a + <v,x> v) + sin t (<a,x> v - <v,x> a).

    v is the unit vector of b's component orthogonal to a. Accurate for nearly
    antipodal a and b; where they are antipodal to working precision the rotation
    plane is not unique and v is any unit vector orthogonal to a.
    """
    c = torch.linalg.vecdot(a, b)
    w = b - c.unsqueeze(1) * a
    # b is nearly -a, so w = b - c a cancels: orthogonalise once more, or v would lean
    # towards a by ~eps/|w| and the result would not quite keep norms
    w = w - torch.linalg.vecdot(a, w).unsqueeze(1) * a
    s = torch.linalg.vector_norm(w, dim=1)
    degenerate = s < torch.finfo(x.dtype).eps ** 0.5
    safe_s = torch.where(degenerate, torch.ones_like(s), s)
    v = torch.where(
        degenerate.unsqueeze(1), orthogonal_unit(a), w / safe_s.unsqueeze(1)
    )
    p = torch.linalg.vecdot(a, x)
    r = torch.linalg.vecdot(v, x)
    coef_a = (c - 1) * p - s * r
    coef_v = (c - 1) * r + s * p
    return x + coef_a.unsqueeze(1) * a + coef_v.unsqueeze(1) * v


def _describe_non_finite(x, src, dst):
    for name, t in (("x", x), ("src", src), ("dst", dst)):
        if not torch.isfinite(t).all():
            return f"{name} contains NaN or inf values"
    return "x is so large that its inner products overflow"


def _rotate_rows(x, src, dst):
    """Rotated rows in x's dtype, plus the values :func:`rotate` validates."""
    out, c, a_err, b_err, finite = run_kernel(
        _rotate_closed_form, _rotate_closed_form_eager, x.numel(), x, src, dst
    )
    near = ((1 + c) < ANTIPODAL_MARGIN).nonzero().squeeze(1)
    if near.numel() > 0:
        dtype = out.dtype
        patched = _rotate_plane_form(
            x[near].to(dtype), src[near].to(dtype), dst[near].to(dtype)
        )
        out = out.index_copy(0, near, patched)
    return out.to(x.dtype), a_err, b_err, finite


class _RotateWithFixedCentres(torch.autograd.Function):
    """Rotation whose gradient w.r.t. x is the inverse rotation of the gradient:
    one fused pass instead of the autograd graph of the closed form."""

    @staticmethod
    def forward(ctx, x, src, dst):
        out, a_err, b_err, finite = _rotate_rows(x, src, dst)
        ctx.save_for_backward(src, dst)
        ctx.mark_non_differentiable(a_err, b_err, finite)
        return out, a_err, b_err, finite

    @staticmethod
    def backward(ctx, grad, *unused):
        src, dst = ctx.saved_tensors
        return _rotate_rows(grad, dst, src)[0], None, None


def rotate(x, src, dst, check=True):
    """Rotate each row of ``x`` by the minimal rotation that carries ``src`` onto ``dst``.

    For row n, R_n turns the plane span{src_n, dst_n} by the angle between src_n and
    dst_n and is the identity on the orthogonal complement, so ``R_n src_n = dst_n``,
    norms and inner products are preserved and ``det R_n = +1``. Cost is O(N * D): no
    D x D matrix is formed. Differentiable with respect to all three inputs; when
    only ``x`` needs gradients (fixed centres, the usual case) the backward pass is
    the inverse rotation R^T g = R_{dst -> src} g, one more O(N * D) pass.

    Args:
        x: (N, D) tensor of vectors to rotate (need not be unit vectors).
        src: (N, D) unit vectors (e.g. the source class centre of each row).
        dst: (N, D) unit vectors (e.g. the target class centre of each row).
        check: validate values (finite, unit ``src``/``dst``). Shapes, dtypes and
            devices are always checked.

    Identical ``src`` and ``dst`` give the identity. Antipodal ones (``dst = -src``)
    have no unique minimal rotation; a half-turn in the plane of ``src`` and a fixed
    orthogonal direction is used. float16/bfloat16 inputs are computed in float32
    and returned in their own dtype.

    Returns:
        (N, D) tensor of rotated rows, same dtype and device as ``x``.
    """
    check_embeddings(x, "x")
    check_same_layout(x, "x", src, "src")
    check_same_layout(x, "x", dst, "dst")
    n, d = x.shape
    if d < 2:
        raise ValueError(f"rotations need at least 2 dimensions, got D={d}")
    if n == 0:
        return x.clone()
    centres_need_grad = torch.is_grad_enabled() and (
        src.requires_grad or dst.requires_grad
    )
    if x.requires_grad and not centres_need_grad and torch.is_grad_enabled():
        out, a_err, b_err, finite = _RotateWithFixedCentres.apply(x, src, dst)
    else:
        out, a_err, b_err, finite = _rotate_rows(x, src, dst)
    if check:
        if not bool(finite):
            raise ValueError("rotate: " + _describe_non_finite(x, src, dst))
        tol = unit_tolerance(x.dtype)
        for name, err in (("src", a_err), ("dst", b_err)):
            err = err.item()
            if not err <= tol:
                raise ValueError(
                    f"rotate: {name} must hold unit vectors; the largest deviation of "
                    f"a row norm from 1 is {err:.3g} (tolerance {tol:.3g}). Normalise "
                    "it first; zero vectors cannot be normalised"
                )
    return out
