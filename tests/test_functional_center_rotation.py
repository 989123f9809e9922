import warnings

import pytest
import torch

from pml_sft.functional import compilation, rotate, rotate_between_centers

from .helpers import DEVICE, random_unit, tol, unit


def _case(dtype, n=60, k=7, d=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = random_unit(k, d, g)
    centers[6] = -centers[0]  # an antipodal pair
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    src = torch.randint(0, k, (n,), generator=g)
    dst = torch.randint(0, k, (n,), generator=g)
    src[:4], dst[:4] = torch.tensor([0, 6, 2, 3]), torch.tensor([6, 0, 2, 1])
    return [t.to(DEVICE) for t in (x.to(dtype), centers.to(dtype), src, dst)]


def test_matches_rotate_on_gathered_centres(dtype):
    x, c, s, d = _case(dtype)
    expected = rotate(x, c[s], c[d])
    got = rotate_between_centers(x, c, s, d)
    assert got.dtype == dtype
    assert torch.allclose(got, expected, atol=tol(dtype) * 10)
    normalized = rotate_between_centers(x, c, s, d, normalize=True)
    assert torch.allclose(normalized, rotate(unit(x), c[s], c[d]), atol=tol(dtype) * 10)


def test_more_centres_than_rows_are_compacted():
    x, c, s, d = _case(torch.float64, n=5, k=7)
    assert torch.allclose(rotate_between_centers(x, c, s, d), rotate(x, c[s], c[d]))


def test_gradcheck_fixed_and_trainable_centres():
    x, c, s, d = _case(torch.float64, n=8, k=7, d=4)
    s[4], d[4] = 0, 5
    c[5] = unit(-c[0] + 0.2 * c[5])  # nearly antipodal: the plane form
    s[:2], d[:2] = 1, 2  # gradcheck needs a smooth point: no exactly antipodal rows
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: rotate_between_centers(t, c, s, d), [xg])
    assert torch.autograd.gradcheck(
        lambda t: rotate_between_centers(t, c, s, d, normalize=True), [xg]
    )
    cg = c.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, cc: rotate_between_centers(t, unit(cc), s, d, check=False), [xg, cg]
    )


def test_gradcheck_without_nearly_antipodal_centres():
    # no patched rows: the backward pass reuses the forward's gathered centres
    g = torch.Generator().manual_seed(1)
    c = random_unit(5, 4, g).to(DEVICE)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64).to(DEVICE)
    s, d = (torch.randint(0, 5, (8,), generator=g).to(DEVICE) for _ in range(2))
    assert not bool(((c[s] * c[d]).sum(1) + 1 < 0.1).any())
    xg = x.clone().requires_grad_()
    for normalize in (False, True):
        assert torch.autograd.gradcheck(
            lambda t: rotate_between_centers(t, c, s, d, normalize=normalize), [xg]
        )


@pytest.mark.parametrize(
    "mutate,err,match",
    [
        (lambda x, c, s, d: (x, 2 * c, s, d), ValueError, "unit vectors"),
        (lambda x, c, s, d: (x, c, s + 100, d), ValueError, r"lie in \[0, 7\)"),
        (lambda x, c, s, d: (x, c, s.float(), d), TypeError, "integer"),
        (lambda x, c, s, d: (x, c, s[:-1], d), ValueError, "shape"),
        (lambda x, c, s, d: (x, c.double(), s, d), ValueError, "dtype"),
        (lambda x, c, s, d: (x.fill_(float("nan")), c, s, d), ValueError, "NaN"),
    ],
)
def test_bad_input(mutate, err, match):
    x, c, s, d = _case(torch.float32)
    with pytest.raises(err, match=match):
        rotate_between_centers(*mutate(x, c, s, d))


def test_compiled_table_kernel_matches_eager():
    old = compilation.get_compile_mode()
    try:
        x, c, s, d = _case(torch.float32, n=200, k=12, d=32)
        compilation.reset_compile_state()
        compilation.set_compile_mode("never")
        xe = x.clone().requires_grad_()
        eager = rotate_between_centers(xe, c, s, d, normalize=True)
        eager.pow(3).sum().backward()
        compilation.set_compile_mode("always")
        xc = x.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            compiled = rotate_between_centers(xc, c, s, d, normalize=True)
            compiled.pow(3).sum().backward()
        assert compilation.compile_failure() is None
        assert torch.allclose(compiled, eager, atol=1e-5)
        assert torch.allclose(xc.grad, xe.grad, atol=1e-4)
    finally:
        compilation.set_compile_mode(old)
        compilation.reset_compile_state()
