import pytest
import torch

from pml_sft.functional import translate

from .helpers import DEVICE, random_unit, tol, unit


def _inputs(dtype, n=10, d=6):
    g = torch.Generator().manual_seed(0)
    return [random_unit(n, d, g, dtype, DEVICE) for _ in range(3)]


def test_translation_matches_formula(dtype):
    x, a, b = _inputs(dtype)
    raw = x.double() - a.double() + b.double()
    assert torch.allclose(
        translate(x, a, b, renormalize=False).double(), raw, atol=tol(dtype)
    )
    out = translate(x, a, b)
    assert out.dtype == dtype
    assert torch.allclose(out.double(), unit(raw), atol=tol(dtype) * 10)
    assert torch.allclose(translate(a, a, b), b, atol=tol(dtype) * 10)


def test_translation_acts_on_the_direction_and_keeps_the_norm(dtype):
    x, a, b = _inputs(dtype)
    scale = torch.linspace(0.1, 10.0, len(x), dtype=torch.float64, device=DEVICE)
    xs = (x.double() * scale.unsqueeze(1)).to(dtype)
    norms = xs.double().norm(dim=1, keepdim=True)
    raw = unit(xs.double()) - a.double() + b.double()
    out = translate(xs, a, b)
    assert out.dtype == dtype
    assert torch.allclose(out.double(), norms * unit(raw), atol=tol(dtype) * 100)
    out_norms = out.double().norm(dim=1, keepdim=True)
    assert torch.allclose(out_norms, norms, rtol=tol(dtype) * 10)
    kept = translate(xs, a, b, renormalize=False).double()
    assert torch.allclose(kept, norms * raw, atol=tol(dtype) * 100)
    # scaling a row scales its translation (for unit rows: as before)
    assert torch.allclose(
        out.double(),
        translate(x, a, b).double() * scale.unsqueeze(1),
        atol=tol(dtype) * 100,
    )


def test_translation_leaves_the_sphere_without_renormalising():
    x, a, b = _inputs(torch.float64)
    norms = translate(x, a, b, renormalize=False).norm(dim=1)
    assert (norms - 1).abs().max() > 0.1


def test_half_precision():
    x, a, b = _inputs(torch.float64)
    expected = translate(x, a, b)
    for dtype in (torch.float16, torch.bfloat16):
        got = translate(x.to(dtype), a.to(dtype), b.to(dtype))
        assert got.dtype == dtype
        assert torch.allclose(got.double(), expected, atol=3e-2)


def test_a_direction_translated_to_zero_gives_a_zero_row():
    # a = e1 and b = (1, 1, 1, 1) / 2 are unit rows with a - b unit (exactly, in
    # binary): the direction u = a - b translates to u - a + b = 0
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], device=DEVICE)
    b = torch.full((2, 4), 0.5, device=DEVICE)
    x = torch.stack(
        [3 * (a[0] - b[0]), torch.tensor([0.0, 1.0, 0.0, 0.0], device=DEVICE)]
    )
    for renormalize in (True, False):
        out = translate(x, a, b, renormalize=renormalize)
        assert torch.equal(out[0], torch.zeros(4, device=DEVICE))
        assert torch.isfinite(out).all() and out[1].norm() > 0.5
    assert translate(x, a, b)[1].norm().item() == pytest.approx(1.0)


def test_bad_input_is_refused():
    x, a, b = _inputs(torch.float32)
    for i, name in enumerate(("x", "src", "dst")):
        args = [x, a, b]
        args[i] = args[i].clone()
        args[i][1] = 0.0
        with pytest.raises(ValueError, match=f"{name} contains a zero vector"):
            translate(*args)
        for bad in (float("nan"), float("inf")):
            args[i][1, 0] = bad
            with pytest.raises(ValueError, match="NaN or inf"):
                translate(*args)
    with pytest.raises(ValueError, match="shape"):
        translate(x[:, :2], a, b)
    with pytest.raises(TypeError, match="dtype"):
        translate(a, a.double(), b)


def test_empty_input():
    x = torch.zeros(0, 4, device=DEVICE)
    assert translate(x, x, x).shape == (0, 4)
