"""Feature translation (Yin et al., CVPR 2019): the baseline that SFT improves on."""

import torch

from ..utils.checks import check_embeddings, check_finite, check_same_layout


def translate(x, src, dst, renormalize=True):
    """Move each row of ``x`` by ``dst - src``: x' = x - src + dst.

    This is the transfer used by feature-transfer learning, which assumes every class
    has the same covariance in Euclidean space. On the hypersphere it leaves the
    sphere, so by default the result is L2-normalised again.

    Args:
        x: (N, D) tensor.
        src: (N, D) tensor, e.g. the source class centre of each row.
        dst: (N, D) tensor, e.g. the target class centre of each row.
        renormalize: L2-normalise the translated rows. A row that translates to the
            zero vector cannot be normalised and raises ``ValueError``.

    Returns:
        (N, D) tensor with the dtype and device of ``x``.
    """
    check_embeddings(x, "x")
    check_same_layout(x, "x", src, "src")
    check_same_layout(x, "x", dst, "dst")
    if x.shape[0] == 0:
        return x.clone()
    out = x - src + dst
    check_finite(out, "translate: x - src + dst")
    if not renormalize:
        return out
    compute = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
    norms = torch.linalg.vector_norm(compute, dim=1, keepdim=True)
    smallest = norms.min().item()
    if not smallest > torch.finfo(compute.dtype).tiny:
        raise ValueError(
            "translate: a translated row is the zero vector and cannot be "
            "renormalised (x == src - dst)"
        )
    return (compute / norms).to(x.dtype)
