"""Minimal rotations on the hypersphere, applied row by row without D x D matrices."""

import math

import torch

from ..utils.checks import (
    check_embeddings,
    check_finite,
    check_same_layout,
    unit_tolerance,
)

# Rows with 1 + <src, dst> below this use the plane form: the closed form divides by
# 1 + <src, dst>, which loses accuracy as the two become antipodal.
ANTIPODAL_MARGIN = 0.1


def compute_dtype(dtype):
    """float16/bfloat16 are computed in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def orthogonal_unit(a):
    """A unit vector orthogonal to each (unit) row of ``a``: e_k minus its projection
    on a, where k is the coordinate in which a is smallest (so the result is never
    near zero for D >= 2)."""
    k = a.abs().argmin(dim=1, keepdim=True)
    e = torch.zeros_like(a).scatter_(1, k, 1.0)
    u = e - a.gather(1, k) * a
    return u / torch.linalg.vector_norm(u, dim=1, keepdim=True)


def plane_basis(a, b):
    """cos t = <a, b>, sin t and the unit vector v of b's component orthogonal to a
    (so b = cos t a + sin t v). Where a and b are (anti)parallel to working precision
    v is any unit vector orthogonal to a."""
    c = torch.linalg.vecdot(a, b)
    w = b - c.unsqueeze(1) * a
    # when b is nearly -a, b - c a cancels: orthogonalise once more, or v would lean
    # towards a by ~eps/|w| and the rotation would not quite keep norms
    w = w - torch.linalg.vecdot(a, w).unsqueeze(1) * a
    s = torch.linalg.vector_norm(w, dim=1)
    degenerate = s < torch.finfo(a.dtype).eps ** 0.5
    safe_s = torch.where(degenerate, torch.ones_like(s), s)
    v = torch.where(
        degenerate.unsqueeze(1), orthogonal_unit(a), w / safe_s.unsqueeze(1)
    )
    return c, s, v


def _rotate_plane_form(x, a, b):
    """R x = x + (cos t - 1)(<a,x> a + <v,x> v) + sin t (<a,x> v - <v,x> a)."""
    c, s, v = plane_basis(a, b)
    p = torch.linalg.vecdot(a, x)
    r = torch.linalg.vecdot(v, x)
    coef_a = (c - 1) * p - s * r
    coef_v = (c - 1) * r + s * p
    return x + coef_a.unsqueeze(1) * a + coef_v.unsqueeze(1) * v


def rotate(x, src, dst, check=True):
    """Rotate each row of ``x`` by the minimal rotation that carries ``src`` onto ``dst``.

    For row n, R_n turns the plane span{src_n, dst_n} by the angle between src_n and
    dst_n and is the identity on the orthogonal complement, so ``R_n src_n = dst_n``,
    norms and inner products are preserved and ``det R_n = +1``. Cost is O(N * D): no
    D x D matrix is formed. With a = src, b = dst:

        R x = x - (<a + b, x> / (1 + <a, b>)) (a + b) + 2 <a, x> b

    Rows whose centres are nearly antipodal (1 + <a, b> < ``ANTIPODAL_MARGIN``) use
    the equivalent plane form, which stays accurate there. Plain autograd:
    differentiable with respect to all three inputs.

    Args:
        x: (N, D) tensor of vectors to rotate (need not be unit vectors), D >= 2.
        src: (N, D) unit vectors (e.g. the source class centre of each row).
        dst: (N, D) unit vectors (e.g. the target class centre of each row).
        check: validate values (finite, unit ``src``/``dst``; one host sync).
            Shapes, dtypes and devices are always checked.

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
    if x.shape[1] < 2:
        raise ValueError(f"rotations need at least 2 dimensions, got D={x.shape[1]}")
    if x.shape[0] == 0:
        return x.clone()
    dtype = compute_dtype(x.dtype)
    xc, a, b = x.to(dtype), src.to(dtype), dst.to(dtype)
    p = torch.linalg.vecdot(a, xc)
    q = torch.linalg.vecdot(b, xc)
    denom = 1 + torch.linalg.vecdot(a, b)
    near = denom < ANTIPODAL_MARGIN
    # one host sync: antipodal rows, and with ``check`` the validation (a NaN or inf
    # anywhere in x, src or dst reaches these inner products)
    summary = [near.any().to(p.dtype)]
    if check:
        summary += [
            (p + q + denom).sum(),
            (torch.linalg.vector_norm(a, dim=1) - 1).abs().amax(),
            (torch.linalg.vector_norm(b, dim=1) - 1).abs().amax(),
        ]
    any_near, *checked = torch.stack(summary).tolist()
    if check:
        _validate(x, src, dst, *checked)
    k = (p + q) / torch.where(near, 1.0, denom)
    out = torch.addcmul(xc, k.neg().unsqueeze(1), a)
    out = out.addcmul((2 * p - k).unsqueeze(1), b)
    if any_near:
        rows = near.nonzero().squeeze(1)
        patched = _rotate_plane_form(xc[rows], a[rows], b[rows])
        out = out.index_copy(0, rows, patched)
    return out.to(x.dtype)


def _validate(x, src, dst, inner_sum, src_err, dst_err):
    if not math.isfinite(inner_sum):
        for name, t in (("x", x), ("src", src), ("dst", dst)):
            check_finite(t, name)
        raise ValueError("rotate: x is so large that its inner products overflow")
    tol = unit_tolerance(x.dtype)
    for name, err in (("src", src_err), ("dst", dst_err)):
        if not err <= tol:
            raise ValueError(
                f"rotate: {name} must hold unit vectors; the largest deviation of a "
                f"row norm from 1 is {err:.3g} (tolerance {tol:.3g}). Normalise it "
                "first; zero vectors cannot be normalised"
            )


def slerp(a, b, t):
    """The unit vectors a fraction ``t`` of the way from unit ``a`` to unit ``b``
    along the great circle (t = 0: a, t = 1: b). Antipodal rows turn towards a fixed
    direction orthogonal to ``a``, as in :func:`rotate`."""
    if t == 1:
        return b
    c, s, v = plane_basis(a, b)
    angle = t * torch.atan2(s, c).unsqueeze(1)
    return torch.cos(angle) * a + torch.sin(angle) * v
