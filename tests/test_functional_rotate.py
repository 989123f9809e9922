import pytest
import torch

from pml_sft.functional import rotate
from pml_sft.upstream.sft_loss import ANTIPODAL_MARGIN

from .helpers import DEVICE, random_unit, rotate_reference, rotation_matrix, tol, unit


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _inputs(n, d, dtype, seed=0):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = random_unit(n, d, g)
    b = random_unit(n, d, g)
    return [t.to(dtype=dtype, device=DEVICE) for t in (x, a, b)]


@pytest.mark.parametrize("n,d", [(1, 2), (7, 3), (33, 16), (64, 128)])
def test_matches_explicit_matrix_reference(dtype, n, d):
    x, a, b = _inputs(n, d, dtype)
    expected = rotate_reference(x.cpu(), a.cpu(), b.cpu())
    got = rotate(x, a, b)
    assert got.dtype == dtype and got.device == x.device
    assert torch.allclose(got.cpu().double(), expected, atol=tol(dtype) * 10, rtol=0)


def test_maps_source_onto_target_and_preserves_geometry(dtype):
    n, d = 50, 24
    x, a, b = _inputs(n, d, dtype)
    y = _inputs(n, d, dtype, seed=1)[0]
    t = tol(dtype) * 10
    assert torch.allclose(rotate(a, a, b), b, atol=t)
    rx, ry = rotate(x, a, b), rotate(y, a, b)
    assert torch.allclose(rx.norm(dim=1), x.norm(dim=1), atol=t, rtol=t)
    assert torch.allclose((rx * ry).sum(1), (x * y).sum(1), atol=t * 10, rtol=t)
    # vectors orthogonal to both centres are unchanged
    basis = torch.stack([a, b], dim=2)
    q, _ = torch.linalg.qr(basis.double())
    z = x.double() - (q @ (q.transpose(1, 2) @ x.double().unsqueeze(2))).squeeze(2)
    z = z.to(dtype)
    assert torch.allclose(rotate(z, a, b), z, atol=t)


def test_identity_inverse_and_determinant(dtype):
    n, d = 20, 6
    x, a, b = _inputs(n, d, dtype)
    t = tol(dtype) * 10
    assert torch.equal(rotate(x, a, a), x) or torch.allclose(rotate(x, a, a), x, atol=t)
    assert torch.allclose(rotate(rotate(x, a, b), b, a), x, atol=t * 10)
    # the matrix of R is obtained by rotating the standard basis
    eye = torch.eye(d, dtype=dtype, device=DEVICE)
    for i in range(3):
        r = rotate(eye, a[i].expand(d, d), b[i].expand(d, d)).T
        assert torch.allclose(r.T @ r, eye, atol=t * 10)
        assert torch.det(r.double().cpu()).item() == pytest.approx(1.0, abs=t * 10)


@pytest.mark.parametrize("gap", [0.0, 1e-12, 1e-7, 1e-3, ANTIPODAL_MARGIN * 0.99, 0.5])
def test_antipodal_and_nearly_antipodal_centers(dtype, gap):
    d = 5
    g = _gen(3)
    a = random_unit(4, d, g)
    # b at angle pi - delta from a, where 1 + cos(pi - delta) = gap
    delta = torch.acos(torch.tensor(gap - 1.0, dtype=torch.float64))
    w = unit(random_unit(4, d, g) - (random_unit(4, d, g) * 0))
    w = unit(w - (w * a).sum(1, keepdim=True) * a)
    b = torch.cos(delta) * a + torch.sin(delta) * w
    x = torch.randn(4, d, generator=g, dtype=torch.float64)
    xa, aa, ba = (t.to(dtype=dtype, device=DEVICE) for t in (x, a, b))
    out = rotate(xa, aa, ba)
    assert torch.isfinite(out).all()
    t = max(tol(dtype) * 10, 1e-7)
    assert torch.allclose(rotate(aa, aa, ba), ba, atol=t * 10)
    assert torch.allclose(out.norm(dim=1), xa.norm(dim=1), atol=t, rtol=t)
    if gap > 1e-6 and dtype == torch.float64:
        assert torch.allclose(out.cpu(), rotate_reference(x, a, b), atol=1e-8)


def test_exact_antipodal_is_a_proper_rotation():
    d = 7
    a = random_unit(1, d, _gen(5))
    eye = torch.eye(d, dtype=torch.float64, device=DEVICE)
    aa = a.to(DEVICE).expand(d, d)
    r = rotate(eye, aa, -aa).T
    assert torch.allclose(r @ a.to(DEVICE)[0], -a.to(DEVICE)[0], atol=1e-12)
    assert torch.allclose(r.T @ r, eye, atol=1e-12)
    assert torch.det(r.cpu()).item() == pytest.approx(1.0, abs=1e-12)


def test_half_precision_matches_float64_reference():
    x, a, b = _inputs(40, 32, torch.float64)
    expected = rotate(x, a, b)
    for dtype, t in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        got = rotate(
            x.to(dtype),
            unit(a.to(dtype).float()).to(dtype),
            unit(b.to(dtype).float()).to(dtype),
        )
        assert got.dtype == dtype
        assert torch.allclose(got.double(), expected, atol=t * x.abs().max().item())


def test_gradcheck_generic_and_near_special_cases():
    g = _gen(7)
    d = 4

    def f(x, a_raw, b_raw):
        return rotate(x, unit(a_raw), unit(b_raw))

    x = torch.randn(3, d, generator=g, dtype=torch.float64)
    a = random_unit(3, d, g)
    b = random_unit(3, d, g)
    cases = [
        b,
        unit(a + 0.05 * b),
        unit(-a + 0.2 * b),
    ]  # generic, near-identity, near-antipodal
    for bb in cases:
        inputs = [t.clone().to(DEVICE).requires_grad_() for t in (x, a, bb)]
        assert torch.autograd.gradcheck(f, inputs)


def test_gradcheck_with_fixed_centers_uses_inverse_rotation():
    # only x needs gradients: the backward pass is the inverse rotation
    g = _gen(9)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    a = random_unit(5, 6, g).to(DEVICE)
    b = random_unit(5, 6, g).to(DEVICE)
    b[0], b[1], b[2] = a[0], -a[1], unit(-a[2] + 0.1 * b[2])
    assert torch.autograd.gradcheck(lambda t: rotate(t, a, b), [x])
    assert torch.autograd.gradgradcheck(lambda t: rotate(t, a, b), [x])
    out = rotate(x, a, b)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    # d sum(R x) / dx = R^T 1 = R_{b -> a} 1
    expected = rotate_reference(
        torch.ones(2, 6, dtype=torch.float64), b[3:].cpu(), a[3:].cpu()
    )
    assert torch.allclose(grad[3:].cpu(), expected, atol=1e-10)


def test_gradients_finite_at_identical_and_antipodal_centers():
    g = _gen(8)
    x = torch.randn(2, 6, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    a = random_unit(2, 6, g).to(DEVICE)
    for b in (a.clone(), -a.clone()):
        src, dst = a.clone().requires_grad_(), b.requires_grad_()
        out = rotate(x, src, dst)
        out.pow(2).sum().backward()
        for t in (x, src, dst):
            assert torch.isfinite(t.grad).all()
            t.grad = None


def test_empty_input_returns_empty():
    x = torch.zeros(0, 8, device=DEVICE)
    assert rotate(x, x, x).shape == (0, 8)


@pytest.mark.parametrize(
    "make,err,match",
    [
        (lambda x, a, b: (x[:, :3], a, b), ValueError, "src has shape"),
        (lambda x, a, b: (x[0], a[0], b[0]), ValueError, r"shape \(N, D\)"),
        (lambda x, a, b: (x, a.double(), b), TypeError, "dtype"),
        (lambda x, a, b: (x.long(), a.long(), b.long()), TypeError, "floating-point"),
        (lambda x, a, b: (x, a.to("meta"), b), ValueError, "device"),
        (lambda x, a, b: ([[1.0]], a, b), TypeError, "torch.Tensor"),
        (
            lambda x, a, b: (x[:, :1], a[:, :1], b[:, :1]),
            ValueError,
            "at least 2 dimensions",
        ),
    ],
)
def test_layout_errors(make, err, match):
    x, a, b = _inputs(4, 5, torch.float32)
    with pytest.raises(err, match=match):
        rotate(*make(x, a, b))


@pytest.mark.parametrize("which", ["x", "src", "dst"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused(which, value):
    x, a, b = _inputs(4, 5, torch.float32)
    t = {"x": x, "src": a, "dst": b}
    t[which][2, 1] = value
    with pytest.raises(ValueError, match=f"{which} contains NaN or inf"):
        rotate(t["x"], t["src"], t["dst"])


@pytest.mark.parametrize("which", ["src", "dst"])
def test_non_unit_and_zero_centers_are_refused(which):
    x, a, b = _inputs(4, 5, torch.float32)
    t = {"src": a, "dst": b}
    t[which][1] *= 1.5
    with pytest.raises(ValueError, match=f"{which} must hold unit vectors"):
        rotate(x, t["src"], t["dst"])
    t[which][1] = 0
    with pytest.raises(ValueError, match="zero vectors cannot be normalised"):
        rotate(x, t["src"], t["dst"])


def test_check_false_skips_value_checks():
    x, a, b = _inputs(4, 5, torch.float64)
    out = rotate(x, 2 * a, b, check=False)
    assert out.shape == x.shape


def test_reference_helper_is_a_rotation():
    # guards the reference itself: R a = b and R is orthogonal
    g = _gen(11)
    a, b = random_unit(2, 5, g)
    r = rotation_matrix(a, b)
    assert torch.allclose(r @ a, b, atol=1e-12)
    assert torch.allclose(r.T @ r, torch.eye(5, dtype=torch.float64), atol=1e-12)
