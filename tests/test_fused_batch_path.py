"""The SFT augmenter's fused (compiled) batch path gives what the general path gives."""

import warnings

import pytest
import torch

from pml_sft import BatchClassCenters, SFTLoss, SphericalFeatureTransform
from pml_sft.functional import batch_rotation, compilation

from .helpers import DEVICE, unit


def _batch(dtype, n_classes=6, per_class=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n_classes) * 7 + 3).repeat_interleave(per_class)
    x = torch.randn(n_classes * per_class, d, generator=g, dtype=torch.float64)
    return x.to(dtype=dtype, device=DEVICE), labels.to(DEVICE)


def _run(mode, compile_mode, x, labels, **kwargs):
    compile_mode(mode)
    sft = SphericalFeatureTransform(
        generator=torch.Generator(device=DEVICE).manual_seed(5), **kwargs
    )
    xg = x.clone().requires_grad_()
    aug, aug_labels, src = sft(xg, labels)
    aug.float().pow(3).sum().backward()
    return aug.detach(), aug_labels, src, xg.grad, sft


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_fused_path_matches_general_path(compile_mode, dtype):
    x, labels = _batch(dtype)
    eager = _run("never", compile_mode, x, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # fails if it fell back
        fused = _run("auto", compile_mode, x, labels)
    assert compilation.compile_failure() is None
    atol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert fused[0].dtype == dtype
    assert torch.allclose(fused[0].double(), eager[0].double(), atol=atol)
    assert torch.equal(fused[1], eager[1]) and torch.equal(fused[2], eager[2])
    assert torch.allclose(fused[3].double(), eager[3].double(), atol=10 * atol)


@pytest.fixture
def kernel_calls(monkeypatch):
    """A list that grows by one each time the fused kernels are entered."""
    calls = []
    real = batch_rotation._RotateToClassMeans.apply
    monkeypatch.setattr(
        batch_rotation._RotateToClassMeans,
        "apply",
        lambda *a: calls.append(1) or real(*a),
    )
    return calls


def test_fused_path_is_used_and_records_stats(compile_mode, kernel_calls):
    calls = kernel_calls
    x, labels = _batch(torch.float64)
    eager = _run("never", compile_mode, x, labels, collect_stats=True)[-1]
    assert not calls
    fused = _run("auto", compile_mode, x, labels, collect_stats=True)[-1]
    assert calls
    for name in ("num_augmented", "num_unmoved_samples", "num_target_classes"):
        assert getattr(fused, name) == getattr(eager, name)
    assert fused.mean_center_angle == pytest.approx(eager.mean_center_angle)


def test_fused_output_keeps_the_angle_to_the_class_centre(compile_mode):
    # the rotation carries the own centre onto the target's and keeps inner products
    x, labels = _batch(torch.float64)
    compile_mode("auto")
    sft = SphericalFeatureTransform(generator=torch.Generator().manual_seed(0))
    aug, aug_labels, src = sft(x, labels)
    xs = unit(x)
    centres = {lab.item(): unit(xs[labels == lab].mean(0)) for lab in labels.unique()}
    for i in range(len(aug)):
        own, target = centres[labels[src[i]].item()], centres[aug_labels[i].item()]
        assert aug_labels[i] != labels[src[i]]
        assert torch.isclose(aug[i] @ target, xs[src[i]] @ own, atol=1e-10)
        assert torch.isclose(aug[i].norm(), torch.ones((), dtype=x.dtype))


@pytest.mark.parametrize(
    "case", ["antipodal", "zero_row", "nan", "singleton", "one_class", "options"]
)
def test_general_path_takes_over(compile_mode, case):
    x, labels = _batch(torch.float64)
    kwargs = {}
    if case == "antipodal":  # class 2 = -class 0: the plane form is needed
        x[8:12] = -x[0:4]
    elif case == "zero_row":
        x[3] = 0
    elif case == "nan":
        x[3, 1] = float("nan")
    elif case == "singleton":
        labels = labels.clone()
        labels[0] = 999
    elif case == "one_class":
        labels = torch.zeros_like(labels)
    else:
        kwargs = {"num_targets": 2, "centers": BatchClassCenters(min_samples=1)}
    outcomes = []
    for mode in ("never", "auto"):
        compile_mode(mode)
        sft = SphericalFeatureTransform(
            generator=torch.Generator().manual_seed(1), **kwargs
        )
        try:
            aug, aug_labels, src = sft(x, labels)
            outcomes.append((aug.shape, src.shape, bool(torch.isfinite(aug).all())))
        except ValueError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]
    assert compilation.compile_failure() is None


def test_fused_path_compile_failure_falls_back(compile_mode, monkeypatch):
    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compilation, "_compile", broken)
    monkeypatch.setattr(compilation, "_trace_and_compile", broken)
    x, labels = _batch(torch.float64)
    compile_mode("auto")
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
        aug, _, _ = SphericalFeatureTransform()(x, labels)
    assert aug.shape == x.shape and bool(torch.isfinite(aug).all())


def test_wrapped_loss_same_on_both_paths(compile_mode):
    from pytorch_metric_learning import losses

    x, labels = _batch(torch.float64, n_classes=8, d=8)
    results = []
    for mode in ("never", "auto"):
        compile_mode(mode)
        loss_func = SFTLoss(
            losses.MultiSimilarityLoss(), generator=torch.Generator().manual_seed(3)
        )
        xg = x.clone().requires_grad_()
        loss = loss_func(xg, labels)
        loss.backward()
        results.append((loss.detach(), xg.grad))
    assert compilation.compile_failure() is None
    assert torch.allclose(results[0][0], results[1][0], atol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-10)


def _traced_kernels():
    return dict(compilation._state["traced"])


def test_traced_kernels_are_reused_per_layout(compile_mode):
    compile_mode("auto")
    x, labels = _batch(torch.float64)
    eager = _run("never", compile_mode, x, labels)
    compile_mode("auto")
    first = _run("auto", compile_mode, x, labels)
    kernels = _traced_kernels()
    assert len(kernels) == 2  # one forward, one backward
    second = _run("auto", compile_mode, x, labels)
    assert _traced_kernels() == kernels  # same layout: the same kernels, no retrace
    for got in (first, second):
        assert torch.allclose(got[0], eager[0], atol=1e-12)
        assert torch.allclose(got[3], eager[3], atol=1e-10)
    _run("auto", compile_mode, *_batch(torch.float64, n_classes=5))
    assert len(_traced_kernels()) == 4  # a new batch shape: new kernels


@pytest.mark.parametrize("cause", ["tracing fails", "too many layouts"])
def test_dynamo_takes_over_from_traced_kernels(compile_mode, monkeypatch, cause):
    calls = []
    real = compilation.run_compiled
    monkeypatch.setattr(
        compilation, "run_compiled", lambda *a: calls.append(1) or real(*a)
    )
    if cause == "tracing fails":

        def broken(*args):
            raise RuntimeError("no tracing here")

        monkeypatch.setattr(compilation, "_trace_and_compile", broken)
    else:
        monkeypatch.setattr(compilation, "TRACED_LAYOUTS", 0)
    x, labels = _batch(torch.float64)
    eager = _run("never", compile_mode, x, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        fused = _run("auto", compile_mode, x, labels)
    assert calls and not _traced_kernels()
    assert compilation.compile_failure() is None
    assert torch.allclose(fused[0], eager[0], atol=1e-12)
    assert torch.allclose(fused[3], eager[3], atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("mode", ["never", "auto"])
@pytest.mark.parametrize("detach_augmented", [False, True])
def test_augmented_batch_is_the_batch_plus_the_call(
    compile_mode, dtype, mode, detach_augmented
):
    x, labels = _batch(dtype)
    aug, aug_labels, _, grad, _ = _run(mode, compile_mode, x, labels)
    sft = SphericalFeatureTransform(
        generator=torch.Generator(device=DEVICE).manual_seed(5),
        detach_augmented=detach_augmented,
    )
    xg = x.clone().requires_grad_()
    all_emb, all_labels = sft.augmented_batch(xg, labels)
    n = x.shape[0]
    assert all_emb.dtype == dtype and all_emb.shape == (2 * n, x.shape[1])
    assert torch.equal(all_emb[:n].detach(), x)
    assert torch.equal(all_labels, torch.cat([labels, aug_labels]))
    atol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert torch.allclose(all_emb[n:].detach().double(), aug.double(), atol=atol)
    # the gradient of the copies plus that through the transform (if not detached)
    if detach_augmented:
        assert all_emb.requires_grad  # through the copied rows only (checked below)
    else:
        all_emb[n:].float().pow(3).sum().backward(retain_graph=True)
        assert torch.allclose(xg.grad.double(), grad.double(), atol=10 * atol)
        xg.grad = None
    all_emb.float().pow(3).sum().backward()
    direct = 3 * x.float().pow(2)
    expected = direct if detach_augmented else direct + grad.float()
    assert torch.allclose(xg.grad.float(), expected, atol=100 * atol, rtol=1e-3)


def test_backward_with_create_graph_records_the_gradient_map(compile_mode):
    # a gradient penalty differentiates the gradient w.r.t. the upstream gradient
    x, labels = _batch(torch.float64)
    compile_mode("auto")
    sft = SphericalFeatureTransform(generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_()
    aug, _, _ = sft(xg, labels)
    upstream = torch.randn_like(aug, requires_grad=True)
    (grad,) = torch.autograd.grad(aug, xg, upstream, create_graph=True)
    assert grad.requires_grad
    # the map upstream -> grad is linear: its derivative is the map itself
    probe = torch.randn_like(grad)
    (second,) = torch.autograd.grad(grad, upstream, probe)
    assert torch.allclose((probe * grad).sum(), (second * upstream).sum())


def test_small_classes_are_checked_first_once_seen(compile_mode, kernel_calls):
    calls = kernel_calls
    compile_mode("auto")
    x, labels = _batch(torch.float64)
    singleton = labels.clone()
    singleton[0] = 999  # a class of one: no centre, so not augmented
    sft = SphericalFeatureTransform(generator=torch.Generator().manual_seed(1))
    sft(x, labels)
    assert len(calls) == 1 and not sft.small_classes_seen
    aug, _, src = sft(x, singleton)  # the kernel finds the small class
    assert len(calls) == 2 and sft.small_classes_seen
    assert 0 not in src.tolist() and len(aug) == len(x) - 1
    aug, _, src = sft(x, singleton)  # now checked before the kernel
    assert len(calls) == 2 and len(aug) == len(x) - 1
    sft(x, labels)  # eligible batches still take the fused path
    assert len(calls) == 3


@pytest.mark.parametrize("layout", ["offset rows", "strided columns", "transposed"])
def test_fused_path_on_views(compile_mode, layout):
    x, labels = _batch(torch.float64)
    n, d = x.shape
    eager = _run("never", compile_mode, x, labels)
    if layout == "offset rows":  # a view that starts inside its storage
        base = torch.randn(n + 3, d, dtype=x.dtype, device=DEVICE)
        base[2 : 2 + n] = x
        view_of = lambda t: t[2 : 2 + n]  # noqa: E731
    elif layout == "strided columns":
        base = torch.randn(n, 2 * d, dtype=x.dtype, device=DEVICE)
        base[:, ::2] = x
        view_of = lambda t: t[:, ::2]  # noqa: E731
    else:
        base = x.T.contiguous()
        view_of = lambda t: t.T  # noqa: E731
    base.requires_grad_()
    view = view_of(base)
    assert view.is_contiguous() == (layout == "offset rows")
    compile_mode("auto")
    sft = SphericalFeatureTransform(
        generator=torch.Generator(device=DEVICE).manual_seed(5)
    )
    aug, aug_labels, _ = sft(view, labels)
    aug.float().pow(3).sum().backward()
    assert len(compilation._state["traced"]) == 2  # traced kernels, not Dynamo's
    assert torch.allclose(aug, eager[0], atol=1e-12)
    assert torch.equal(aug_labels, eager[1])
    assert torch.allclose(view_of(base.grad), eager[3], atol=1e-10)
