"""Class-covariance sampling: the online estimate against the pooled float64 mean
and covariance, the draws' spread, state and the gradient's direction."""

import pytest
import torch
from pytorch_metric_learning import losses, miners

import pml_sft

from .helpers import DEVICE


def batch(classes=4, per_class=4, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, d, generator=g, dtype=dtype)
    return x.to(DEVICE), torch.arange(classes).repeat_interleave(per_class).to(DEVICE)


def test_the_estimate_is_the_pooled_mean_and_covariance_of_all_samples_seen():
    aug = pml_sft.ClassCovarianceSampling(4, 6).double().to(DEVICE)
    seen = []
    for seed in range(3):
        x, labels = batch(seed=seed, per_class=3 + seed)
        aug.augment(x, labels)
        seen.append((torch.nn.functional.normalize(x, dim=1), labels))
    unit = torch.cat([u for u, _ in seen])
    labels = torch.cat([y for _, y in seen])
    for c in range(4):
        rows = unit[labels == c]
        mean = rows.mean(0)
        cov = (rows - mean).T @ (rows - mean) / len(rows)  # the population covariance
        assert aug.count[c] == len(rows)
        torch.testing.assert_close(aug.mean[c], mean)
        torch.testing.assert_close(aug.covariance[c], cov)


def test_draws_spread_as_the_class_covariance_and_keep_the_label():
    torch.manual_seed(0)
    d = 3
    aug = pml_sft.ClassCovarianceSampling(
        1,
        d,
        num_samples=4000,
        strength=1e-4,
        generator=torch.Generator().manual_seed(0),
    ).double()
    # one class whose directions spread along the second axis only
    scale = torch.tensor([0.0, 0.3, 0.003], dtype=torch.float64)
    x = (
        torch.tensor([[1.0, 0, 0]], dtype=torch.float64)
        + torch.randn(64, d, dtype=torch.float64) * scale
    )
    labels = torch.zeros(64, dtype=torch.long)
    aug.augment(x, labels)  # learns the covariance
    single = x[:1]
    points, point_labels, sources = aug.augment(single, labels[:1])
    assert (point_labels == 0).all() and (sources == 0).all()
    torch.testing.assert_close(points.norm(dim=1), torch.ones(4000, dtype=points.dtype))
    offsets = points - torch.nn.functional.normalize(single, dim=1)
    spread = offsets.std(dim=0)
    assert spread[2] < spread[1] / 10  # along the class's own spread, not isotropic


def test_samples_keep_gradient_and_change_its_direction():
    for inner, miner in (
        (losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
        (losses.ContrastiveLoss(), None),
        (losses.NormalizedSoftmaxLoss(4, 6).double(), None),
    ):
        wrapped = pml_sft.ClassCovarianceSamplingLoss(
            inner.to(DEVICE), 4, 6, miner, warmup_iterations=0
        ).double()
        x, labels = batch()
        grads = []
        for fn in (
            wrapped,
            lambda e, y: inner(e, y, miner(e, y) if miner is not None else None),
        ):
            e = x.clone().requires_grad_()
            fn(e, labels).backward()
            grads.append(e.grad.flatten())
        assert wrapped.num_augmented == len(labels)
        assert torch.nn.functional.cosine_similarity(*grads, dim=0) < 1 - 1e-6


def test_state_resumes_exactly_and_bad_input_is_named():
    a = pml_sft.ClassCovarianceSampling(
        4, 6, generator=torch.Generator().manual_seed(1)
    )
    x, labels = batch(dtype=torch.float32)
    a.augment(x, labels)
    b = pml_sft.ClassCovarianceSampling(4, 6, generator=torch.Generator())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.augment(x, labels)[0], b.augment(x, labels)[0])
    with pytest.raises(ValueError, match="embedding_size=6"):
        a(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        a(torch.randn(4, 6), torch.full((4,), 9))
    for strength in (0, float("inf")):
        with pytest.raises(ValueError, match="strength must be a finite number > 0"):
            pml_sft.ClassCovarianceSampling(4, 6, strength=strength)
    # the count stays exact in half precision (a float16 count stopped at 2048)
    half = pml_sft.ClassCovarianceSampling(2, 6).half()
    assert half.count.dtype == torch.long


def test_few_samples_in_many_dimensions_draw_without_failing():
    # 4 samples of a class in 128 dimensions, float32: a rank-3 covariance that
    # float32 updates leave not exactly positive semi-definite (Cholesky failed)
    aug = pml_sft.ClassCovarianceSampling(8, 128)
    for seed in range(3):
        x, labels = batch(classes=8, per_class=4, d=128, seed=seed, dtype=torch.float32)
        points, _, _ = aug.augment(x.cpu(), labels.cpu())
        assert torch.isfinite(points).all() and len(points) == 32


def test_an_evaluation_leaves_the_estimate_as_it_was():
    aug = pml_sft.ClassCovarianceSampling(4, 6).double()
    x, labels = batch()
    aug.augment(x.cpu(), labels.cpu())
    state = {k: v.clone() for k, v in aug.state_dict().items() if torch.is_tensor(v)}
    with torch.no_grad():
        aug(x.cpu(), labels.cpu())
    aug.eval()
    aug(x.cpu(), labels.cpu())
    for k, v in aug.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, state[k]), k


def test_the_wrapper_estimates_during_the_warm_up():
    wrapped = pml_sft.ClassCovarianceSamplingLoss(
        losses.ContrastiveLoss(), 4, 6, warmup_iterations=3
    )
    x, labels = batch(dtype=torch.float32)
    for step in range(3):  # the warm-up: nothing drawn, the estimate grows
        wrapped(x.cpu().requires_grad_(), labels.cpu())
        assert wrapped.num_augmented == 0
        assert (wrapped.augmenter.count == 4 * (step + 1)).all()
    with torch.no_grad():
        wrapped(x.cpu(), labels.cpu())
    assert (wrapped.augmenter.count == 12).all()
    wrapped(x.cpu().requires_grad_(), labels.cpu())
    assert wrapped.num_augmented == 16 and (wrapped.augmenter.count == 16).all()


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
)
def test_every_integer_label_dtype_is_taken_and_given_back(dtype):
    # (uint8 labels would index as a mask, int8 and int16 not at all)
    aug = pml_sft.ClassCovarianceSampling(4, 6, generator=torch.Generator())
    x, labels = batch(dtype=torch.float32)
    aug(x, labels)
    points, out_labels, rows = aug(x, labels.to(dtype))
    assert len(points) == 16 and out_labels.dtype == dtype
    assert torch.equal(out_labels.long(), labels[rows])


def test_an_evaluation_leaves_the_generator_as_it_was():
    aug = pml_sft.ClassCovarianceSampling(
        4, 6, generator=torch.Generator().manual_seed(4)
    ).double()
    x, labels = batch()
    aug(x.cpu(), labels.cpu())
    state = aug.generator.get_state()
    with torch.no_grad():
        aug(x.cpu(), labels.cpu())
    aug.eval()
    aug(x.cpu(), labels.cpu())
    assert torch.equal(aug.generator.get_state(), state)


def test_a_proxy_loss_of_another_size_is_refused_at_construction():
    for inner in (losses.NormalizedSoftmaxLoss(4, 5), losses.ProxyAnchorLoss(3, 6)):
        with pytest.raises(ValueError, match="does not fit"):
            pml_sft.ClassCovarianceSamplingLoss(inner, 4, 6, warmup_iterations=0)
    pml_sft.ClassCovarianceSamplingLoss(
        losses.NormalizedSoftmaxLoss(4, 6), 4, 6, warmup_iterations=0
    )
