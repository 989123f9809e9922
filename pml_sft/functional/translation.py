"""Feature translation (Yin et al., CVPR 2019): the baseline that SFT improves on."""

import torch

from ..upstream.sft_loss import _compute_dtype, _translate, _unit
from ..utils.checks import check_directions, check_embeddings, check_same_layout


def translate(
    x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, renormalize: bool = True
) -> torch.Tensor:
    """Move the direction u = x / |x| of each row of ``x`` by ``dst - src``.

    This is the transfer of feature-transfer learning, which assumes every class has
    the same covariance in Euclidean space. On the hypersphere ``u - src + dst``
    leaves the sphere, so by default the result is given the norm of x again (unit
    rows stay unit rows), as SFT's rotation keeps it.

    Args:
        x: (N, D) tensor without zero rows.
        src: (N, D) unit vectors, e.g. the source class centre of each row.
        dst: (N, D) unit vectors, e.g. the target class centre of each row.
        renormalize: give each translated row the norm of its row of x; False
            returns ``|x| (u - src + dst)`` (for unit x: ``x - src + dst``).

    Returns:
        (N, D) tensor with the dtype and device of ``x`` (float16/bfloat16 are
        computed in float32). A row whose direction translates to the zero vector
        (u = src - dst) comes back as zeros.
    """
    check_embeddings(x, "x")
    check_same_layout(x, "x", src, "src")
    check_same_layout(x, "x", dst, "dst")
    if x.shape[0] == 0:
        return x.clone()
    check_directions(x, "x")
    for name, t in (("src", src), ("dst", dst)):
        check_directions(t, name)
    compute = _compute_dtype(x.dtype)
    x, a, b = (t.to(compute) for t in (x, src, dst))
    if renormalize:
        return _translate(x, a, b).to(src.dtype)
    unit, norms = _unit(x)
    return ((unit - a + b) * norms).to(src.dtype)
