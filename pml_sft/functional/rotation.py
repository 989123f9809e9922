"""Minimal rotations on the hypersphere, applied row by row without D x D matrices.

The maths lives in :mod:`pml_sft.upstream.sft_loss` (the file proposed to PML); this
module adds the input checks of a public entry point and ``slerp``.
"""

import math

import torch

from ..upstream import sft_loss
from ..utils.checks import (
    check_embeddings,
    check_finite,
    check_same_layout,
    unit_tolerance,
)


def rotate(
    x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, check: bool = True
) -> torch.Tensor:
    """Rotate each row of ``x`` by the minimal rotation that carries ``src`` onto ``dst``.

    For row n, R_n turns the plane span{src_n, dst_n} by the angle between src_n and
    dst_n and is the identity on the orthogonal complement, so ``R_n src_n = dst_n``,
    norms and inner products are preserved and ``det R_n = +1``. Cost is O(N * D): no
    D x D matrix is formed. With a = src, b = dst:

        R x = x - (<a + b, x> / (1 + <a, b>)) (a + b) + 2 <a, x> b

    Rows whose centres are nearly antipodal (1 + <a, b> < ``ANTIPODAL_MARGIN``) use
    the equivalent plane form, which stays accurate there. Plain autograd:
    differentiable with respect to all three inputs. The computation is
    :func:`pml_sft.upstream.sft_loss._rotate`.

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
    out = compute_rotate(x, src, dst)
    if check:
        # one host sync: a NaN or inf in x, src or dst reaches the output
        norms = torch.stack([src, dst]).to(out.dtype).norm(dim=2)
        errors = (norms - 1).abs().amax(dim=1)
        total, src_err, dst_err = torch.cat([out.sum().view(1), errors]).tolist()
        validate("rotate", x.dtype, src=(src, src_err), dst=(dst, dst_err))
        if not math.isfinite(total):  # NaN or inf in x, or an overflow
            check_finite(x, "x")
            out = rotate_scaled(x, src, dst)
    return out.to(x.dtype)


def compute_rotate(x, src, dst):
    """The upstream rotation in the compute dtype (float32 for half precision)."""
    compute = sft_loss._compute_dtype(x.dtype)
    return sft_loss._rotate(*(t.to(compute) for t in (x, src, dst)))


def rotate_scaled(x, src, dst):
    """The rotation of finite rows so large that the closed form overflows (its
    coefficients exceed |x| by up to 1 / (1 + <src, dst>)): R x = s R (x / s) for the
    largest entry s of each row, as R is linear."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    out = compute_rotate(x / scale, src, dst) * scale.to(
        sft_loss._compute_dtype(x.dtype)
    )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            "rotate: the rotated rows do not fit in "
            f"{sft_loss._compute_dtype(x.dtype)} (their norms overflow)"
        )
    return out


def validate(caller, dtype, **rows):
    """Refuse rows (name -> (tensor, largest deviation of a row norm from 1)) that are
    not unit vectors, or hold NaN/inf."""
    for name, (t, err) in rows.items():
        if not math.isfinite(err):
            check_finite(t, name)
    tol = unit_tolerance(dtype)
    for name, (_, err) in rows.items():
        if not err <= tol:
            raise ValueError(
                f"{caller}: {name} must hold unit vectors; the largest deviation of a "
                f"row norm from 1 is {err:.3g} (tolerance {tol:.3g}). Normalise it "
                "first; zero vectors cannot be normalised"
            )


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The unit vectors a fraction ``t`` of the way from unit ``a`` to unit ``b``
    along the great circle (t = 0: a, t = 1: b). Antipodal rows turn towards a fixed
    direction orthogonal to ``a``, as in :func:`rotate`."""
    check_embeddings(a, "a")
    check_same_layout(a, "a", b, "b")
    if a.shape[1] < 2:
        raise ValueError(f"slerp needs at least 2 dimensions, got D={a.shape[1]}")
    if isinstance(t, bool) or not (isinstance(t, (int, float)) and 0 <= t <= 1):
        raise ValueError(f"t must be a number in [0, 1], got {t!r}")
    if a.shape[0] == 0:
        return a.clone()
    norms = torch.stack([a, b]).to(sft_loss._compute_dtype(a.dtype)).norm(dim=2)
    a_err, b_err = (norms - 1).abs().amax(dim=1).tolist()  # NaN/inf show here too
    validate("slerp", a.dtype, a=(a, a_err), b=(b, b_err))
    return great_circle_point(a, b, t)


def great_circle_point(a, b, t):
    """:func:`slerp` for inputs already checked."""
    if t == 1:
        return b
    c, s, v = sft_loss._plane_basis(a, b)
    angle = t * torch.atan2(s, c).unsqueeze(1)
    return torch.cos(angle) * a + torch.sin(angle) * v
