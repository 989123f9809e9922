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


def test_zero_result_and_bad_input_are_refused():
    x, a, b = _inputs(torch.float32)
    with pytest.raises(ValueError, match="zero vector"):
        translate(a - b, a, b)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        translate(x, a, b)
    with pytest.raises(ValueError, match="shape"):
        translate(x[:, :2], a, b)
    with pytest.raises(TypeError, match="dtype"):
        translate(a, a.double(), b)


def test_empty_input():
    x = torch.zeros(0, 4, device=DEVICE)
    assert translate(x, x, x).shape == (0, 4)
