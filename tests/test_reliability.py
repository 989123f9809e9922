"""Checkpoint and resume, hostile inputs, determinism and property-based checks."""

import copy
import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import losses, miners

import pml_sft
from pml_sft.contrib import AblationLoss
from pml_sft.functional import rotate

from .helpers import DEVICE, unit

C, D = 6, 8


def _data(step, n=24):
    g = torch.Generator().manual_seed(step)
    labels = torch.arange(C).repeat_interleave(n // C)
    x = torch.randn(n, D, generator=g) + 2 * torch.randn(C, D, generator=g)[labels]
    return x.to(DEVICE), labels.to(DEVICE)


def _setup(generator_seed=1):
    torch.manual_seed(0)
    model = torch.nn.Linear(D, D).to(DEVICE)
    augmenter = pml_sft.SphericalFeatureTransform(
        centers=pml_sft.MovingAverageClassCenters(C, D),
        generator=torch.Generator(device=DEVICE).manual_seed(generator_seed),
    )
    loss_fn = AblationLoss(
        losses.ArcFaceLoss(C, D),
        augmenter,
        miner=miners.MultiSimilarityMiner(),
        warmup_iterations=3,
        ramp_iterations=4,
        aug_weight=0.8,
    ).to(DEVICE)
    optimizer = torch.optim.Adam(
        list(model.parameters()) + list(loss_fn.parameters()), lr=0.01
    )
    return model, loss_fn, optimizer


def _step(model, loss_fn, optimizer, step):
    x, y = _data(step)
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_resume_from_checkpoint_is_bit_for_bit():
    model, loss_fn, optimizer = _setup()
    uninterrupted = [_step(model, loss_fn, optimizer, s) for s in range(12)]

    model, loss_fn, optimizer = _setup()
    first = [_step(model, loss_fn, optimizer, s) for s in range(5)]
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    # fresh objects, with a differently seeded generator: all state comes from the file
    model, loss_fn, optimizer = _setup(generator_seed=999)
    model.load_state_dict(checkpoint["model"])
    loss_fn.load_state_dict(checkpoint["loss"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    assert int(loss_fn.iteration) == 5
    resumed = first + [_step(model, loss_fn, optimizer, s) for s in range(5, 12)]
    assert resumed == uninterrupted  # exact equality of every loss value


def _default_setup(generator_seed=1):
    torch.manual_seed(0)
    model = torch.nn.Linear(D, D).to(DEVICE)
    loss_fn = pml_sft.FeatureTransformLoss(
        losses.MultiSimilarityLoss(),
        pml_sft.SphericalFeatureTransform(
            generator=torch.Generator(device=DEVICE).manual_seed(generator_seed)
        ),
        warmup_iterations=0,
    ).to(DEVICE)
    return model, loss_fn, torch.optim.Adam(model.parameters(), lr=0.01)


def _step_with_small_classes(model, loss_fn, optimizer, step):
    """Steps 2 and 7 hold a class with a single sample (no batch centre)."""
    x, y = _data(step)
    if step in (2, 7):
        x, y = x[3:], y[3:]  # class 0 keeps one of its 4 samples
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_resume_is_bit_for_bit_in_the_default_configuration():
    # the README's configuration (no environment variable, no option), with batches
    # holding a one-sample class before and after the checkpoint
    model, loss_fn, optimizer = _default_setup()
    uninterrupted = [
        _step_with_small_classes(model, loss_fn, optimizer, s) for s in range(10)
    ]
    model, loss_fn, optimizer = _default_setup()
    first = [_step_with_small_classes(model, loss_fn, optimizer, s) for s in range(5)]
    buffer = io.BytesIO()
    torch.save(
        [model.state_dict(), loss_fn.state_dict(), optimizer.state_dict()], buffer
    )
    buffer.seek(0)
    states = torch.load(buffer, weights_only=False)
    model, loss_fn, optimizer = _default_setup(generator_seed=999)
    for obj, state in zip((model, loss_fn, optimizer), states):
        obj.load_state_dict(state)
    resumed = first + [
        _step_with_small_classes(model, loss_fn, optimizer, s) for s in range(5, 10)
    ]
    assert resumed == uninterrupted
    # and the generator's state is what carries the draws: another seed differs
    model, loss_fn, optimizer = _default_setup(generator_seed=999)
    other = [_step_with_small_classes(model, loss_fn, optimizer, s) for s in range(10)]
    assert other != uninterrupted


def test_checkpoint_with_other_sizes_is_refused():
    _, loss_fn, _ = _setup()
    state = loss_fn.state_dict()
    for classes, size, match in (
        (C + 1, D, "num_classes=7"),
        (C, D + 2, "embedding_size=10"),
    ):
        other = pml_sft.FeatureTransformLoss(
            losses.ContrastiveLoss(),
            pml_sft.SphericalFeatureTransform(
                centers=pml_sft.MovingAverageClassCenters(classes, size),
                generator=torch.Generator(device=DEVICE),  # as the saved one
            ),
            warmup_iterations=3,  # the saved schedule (another one is refused first)
            ramp_iterations=4,
        )
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(state, strict=False)
    # the same sizes with another schedule: refused for the schedule
    other = pml_sft.FeatureTransformLoss(
        losses.ContrastiveLoss(),
        pml_sft.SphericalFeatureTransform(
            centers=pml_sft.MovingAverageClassCenters(C, D),
            generator=torch.Generator(device=DEVICE),
        ),
        warmup_iterations=0,
    )
    with pytest.raises(ValueError, match=r"the state's schedule \(warmup, ramp\)"):
        other.load_state_dict(state, strict=False)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_never_give_a_silent_nan(training, value):
    x, y = _data(0)
    x[3, 2] = value
    loss_fn = pml_sft.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=0)
    loss_fn.train(training)
    with pytest.raises(ValueError, match="NaN or inf"):
        loss_fn(x, y)


def test_hostile_inputs_each_give_a_result_or_a_clear_error():
    x, y = _data(0)
    loss_fn = pml_sft.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=0)
    with pytest.raises(ValueError, match="zero vector"):
        loss_fn(torch.cat([x[:-1], torch.zeros_like(x[:1])]), y)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        loss_fn(x[None], y)
    with pytest.raises(TypeError, match="floating-point"):
        loss_fn(x.long(), y)
    with pytest.raises(TypeError, match="integer"):
        loss_fn(x, y.float())
    with pytest.raises(ValueError, match="entries but there are"):
        loss_fn(x, y[:-1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        pml_sft.FeatureTransformLoss(
            losses.ContrastiveLoss(),
            pml_sft.SphericalFeatureTransform(
                centers=pml_sft.MovingAverageClassCenters(C, D)
            ),
            warmup_iterations=0,
        ).to(DEVICE)(x, y + 1)
    with pytest.raises(ValueError, match="too large to normalise"):
        loss_fn(torch.full_like(x, 1e37), y)  # finite values, overflowing norm
    with pytest.raises(ValueError, match="ref_emb"):
        loss_fn(x, y, None, x, y)


def test_degenerate_batches_give_correct_results():
    x, y = _data(0)
    for inner in (losses.MultiSimilarityLoss(), losses.ArcFaceLoss(C, D)):
        loss_fn = pml_sft.SFTLoss(inner, warmup_iterations=0).to(DEVICE)
        empty = loss_fn(x[:0].requires_grad_(), y[:0])
        assert empty.item() == 0.0  # ArcFace alone returns NaN for an empty batch
        one_class = y[y == 0]
        assert torch.equal(
            loss_fn(x[: len(one_class)], one_class),
            inner(x[: len(one_class)], one_class),
        )
    start = dict(warmup_iterations=0)
    huge = y.long() * 10**15 + 10**17
    loss_fn = pml_sft.SFTLoss(losses.MultiSimilarityLoss(), **start)
    assert torch.isfinite(loss_fn(x, huge)) and loss_fn.num_augmented == len(x)
    unnormalised = x * torch.logspace(-3, 3, len(x), device=DEVICE).unsqueeze(1)
    loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), **start)
    assert torch.isfinite(loss_fn(unnormalised, y))
    assert loss_fn.num_augmented == len(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_losses_are_finite_and_centers_float32(dtype):
    x, y = _data(0)
    centres = pml_sft.MovingAverageClassCenters(C, D)
    loss_fn = pml_sft.FeatureTransformLoss(
        losses.ContrastiveLoss(),
        pml_sft.SphericalFeatureTransform(centers=centres),
        warmup_iterations=0,
    ).to(DEVICE)
    xh = x.to(dtype).requires_grad_()
    loss = loss_fn(xh, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(xh.grad).all()
    assert centres.centers.dtype == torch.float32
    batch = pml_sft.BatchClassCenters()(unit(x).to(dtype), y)
    assert batch.centers.dtype == torch.float32


def test_fixed_generator_reproduces_targets_and_results():
    x, y = _data(1)

    def run(seed):
        sft = pml_sft.SphericalFeatureTransform(
            num_targets=2, generator=torch.Generator().manual_seed(seed)
        )
        return [sft(x, y) for _ in range(3)]

    a, b, other = run(5), run(5), run(6)
    for (aug_a, lab_a, src_a), (aug_b, lab_b, src_b) in zip(a, b):
        assert (
            torch.equal(aug_a, aug_b)
            and torch.equal(lab_a, lab_b)
            and torch.equal(src_a, src_b)
        )
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, other))
    # successive calls draw new targets
    assert not torch.equal(a[0][1], a[1][1])


def test_keyed_draws_reordering_the_batch_reorders_the_augmentation():
    x, y = _data(2)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def run(xx, yy):
        sft = pml_sft.SphericalFeatureTransform(
            generator=torch.Generator().manual_seed(3), keyed_draws=True
        )
        return sft(xx, yy)

    aug, labels, src = run(x, y)
    aug_p, labels_p, src_p = run(x[perm], y[perm])
    # source row i of the permuted batch is row perm[i] of the original
    order = torch.argsort(perm[src_p])
    assert torch.equal(perm[src_p][order], src)
    assert torch.equal(labels_p[order], labels)
    assert torch.allclose(aug_p[order], aug, atol=1e-6)


dtypes = st.sampled_from([torch.float32, torch.float64])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 20),
    d=st.integers(2, 40),
    dtype=dtypes,
    seed=st.integers(0, 2**31 - 1),
    special=st.sampled_from(["random", "identical", "antipodal", "near_antipodal"]),
)
def test_rotation_invariants_property(n, d, dtype, seed, special):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = unit(torch.randn(n, d, generator=g, dtype=torch.float64))
    b = unit(torch.randn(n, d, generator=g, dtype=torch.float64))
    if special == "identical":
        b = a.clone()
    elif special == "antipodal":
        b = -a
    elif special == "near_antipodal":
        b = unit(-a + 1e-3 * b)
    x, a, b = (t.to(dtype=dtype, device=DEVICE) for t in (x, a, b))
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    out = rotate(x, a, b)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), x.norm(dim=1), atol=tol, rtol=tol)
    assert torch.allclose(rotate(a, a, b), b, atol=tol * 10)
    assert torch.allclose(
        rotate(out, b, a), x, atol=tol * 10 * max(1.0, x.abs().max().item())
    )
    y = x.roll(1, dims=0)
    assert torch.allclose(
        (out * rotate(y, a, b)).sum(1), (x * y).sum(1), atol=tol * 10 * d, rtol=tol
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    label_offset=st.sampled_from([0, 7, 10**12]),
    d=st.integers(2, 16),
    dtype=st.sampled_from(
        [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    ),
    method=st.sampled_from(["sft", "translation"]),
    num_targets=st.integers(1, 3),
    seed=st.integers(0, 10**6),
)
def test_wrapped_loss_is_finite_property(
    layout, label_offset, d, dtype, method, num_targets, seed
):
    g = torch.Generator().manual_seed(seed)
    labels = (
        torch.cat([torch.full((k,), i) for i, k in enumerate(layout)]) * 3
        + label_offset
    )
    labels = labels[torch.randperm(len(labels), generator=g)]
    x = (
        torch.randn(len(labels), d, generator=g)
        .to(dtype=dtype, device=DEVICE)
        .requires_grad_()
    )
    cls = pml_sft.SphericalFeatureTransform
    cls = cls if method == "sft" else pml_sft.FeatureTranslation
    loss_fn = pml_sft.FeatureTransformLoss(
        losses.MultiSimilarityLoss(),
        cls(num_targets=num_targets, generator=copy.deepcopy(g)),
        warmup_iterations=0,
    )
    loss = loss_fn(x, labels.to(DEVICE))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    classes_with_centers = sum(k >= 2 for k in layout)
    expected = (
        sum(k for k in layout if k >= 2) * min(num_targets, classes_with_centers - 1)
        if classes_with_centers > 1
        else 0
    )
    assert loss_fn.num_augmented == expected


@pytest.mark.parametrize("bad", ["zero", "overflow"])
def test_rows_without_a_direction_fail_at_the_first_step_not_when_augmenting(bad):
    x, y = _data(0)
    x = x.double()
    x[2] = 0.0 if bad == "zero" else 1e200  # its squared norm overflows float64
    loss_fn = pml_sft.SFTLoss(losses.MultiSimilarityLoss(), total_iterations=1000)
    with pytest.raises(
        ValueError, match="zero vector" if bad == "zero" else "too large"
    ):
        loss_fn(x, y)  # step 1 of 1000: no augmentation is due before step 501
