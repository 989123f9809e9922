"""Spherical Embedding Expansion (SEE): the geometry against a float64 reference,
which samples are expanded, detached points, and what the wrapper trains."""

import math

import pytest
import torch
from pytorch_metric_learning import losses, miners

import pml_sft

from .helpers import DEVICE


def batch(classes=4, per_class=4, d=24, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, d, generator=g, dtype=dtype)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return x.to(DEVICE), labels.to(DEVICE)


def test_points_lie_on_the_sphere_at_the_samples_angle_as_a_regular_simplex():
    x, labels = batch()
    proxies = torch.randn(4, 24, dtype=torch.float64, device=DEVICE)
    n = 5
    see = pml_sft.SphericalEmbeddingExpansion(n, 0.5, 0.5)
    aug, aug_labels, sources = see.augment(x, labels, proxies)
    assert aug.shape == (8 * n, 24) and aug.dtype == torch.float64
    unit = torch.nn.functional.normalize(x, dim=1)
    c = torch.nn.functional.normalize(proxies, dim=1)
    for k in range(8):
        rows = slice(k * n, (k + 1) * n)
        src = int(sources[k * n])
        assert (sources[rows] == src).all() and (aug_labels[rows] == labels[src]).all()
        z, centre, points = unit[src], c[labels[src]], aug[rows]
        # on the sphere, at the sample's angle to its centre
        torch.testing.assert_close(points.norm(dim=1), torch.ones(n, dtype=z.dtype))
        cos = z @ centre
        torch.testing.assert_close(points @ centre, cos.expand(n))
        # the parts orthogonal to the centre: the sample's and the points' form a
        # regular simplex of n + 1 vertices (pairwise cosine -1/n, sum zero)
        radial = torch.cat([z[None], points]) - (cos * centre)[None]
        radial = radial / radial.norm(dim=1, keepdim=True)
        gram = radial @ radial.T
        expected = torch.full((n + 1, n + 1), -1.0 / n, dtype=z.dtype)
        expected.fill_diagonal_(1.0)
        torch.testing.assert_close(gram, expected.to(gram.device))
        torch.testing.assert_close(
            radial.sum(0), torch.zeros(24, dtype=z.dtype, device=z.device)
        )


def test_the_samples_nearest_their_centre_are_expanded_by_a_growing_share():
    x, labels = batch(classes=5, per_class=4)
    proxies = torch.randn(5, 24, dtype=torch.float64, device=DEVICE)
    see = pml_sft.SphericalEmbeddingExpansion(2, 0.1, 0.6)
    cos = (
        torch.nn.functional.normalize(x, dim=1)
        * torch.nn.functional.normalize(proxies, dim=1)[labels]
    ).sum(1)
    for progress, count in ((0.0, 2), (0.5, 7), (1.0, 12)):
        see.progress = progress  # share 0.1, 0.35, 0.6 of 20 samples
        _, _, sources = see.augment(x, labels, proxies)
        expanded = sources[::2]
        assert see.num_expanded == count and len(expanded) == count
        assert set(expanded.tolist()) == set(cos.topk(count).indices.tolist())


def test_without_proxies_the_batch_class_means_are_the_centres():
    x, labels = batch(classes=3, per_class=3)
    labels = labels.clone()
    labels[-1] = 9  # a class with one sample has no mean to expand around
    see = pml_sft.SphericalEmbeddingExpansion(3, 1.0, 1.0)
    aug, _, sources = see.augment(x, labels)
    assert 8 not in sources.tolist() and len(set(sources.tolist())) == 8
    unit = torch.nn.functional.normalize(x, dim=1)
    centre = torch.nn.functional.normalize(unit[:3].sum(0), dim=0)
    first = aug[sources == 0]
    torch.testing.assert_close(first @ centre, (unit[0] @ centre).expand(3))


def test_points_are_detached_and_reproducible_from_the_generator():
    x, labels = batch(dtype=torch.float32)
    x.requires_grad_()
    make = lambda: pml_sft.SphericalEmbeddingExpansion(  # noqa: E731
        4, 0.5, 0.5, generator=torch.Generator().manual_seed(3)
    )
    first, second = make(), make()
    a, _, _ = first(x, labels)
    b, _, _ = second(x, labels)
    assert not a.requires_grad and torch.equal(a, b)
    state = first.state_dict()
    c, _, _ = first(x, labels)
    second.load_state_dict(state)
    d, _, _ = second(x, labels)
    assert torch.equal(c, d) and not torch.equal(a, c)


def test_options_are_checked():
    with pytest.raises(ValueError, match="at least 18 dimensions"):
        pml_sft.SphericalEmbeddingExpansion()(*batch(d=8))
    with pytest.raises(ValueError, match="min_share=0.5 exceeds max_share=0.1"):
        pml_sft.SphericalEmbeddingExpansion(4, 0.5, 0.1)
    with pytest.raises(ValueError, match="max_share must be a number in"):
        pml_sft.SphericalEmbeddingExpansion(4, 0.1, 2)
    with pytest.raises(TypeError, match="did you mean 'num_points'"):
        pml_sft.SphericalEmbeddingExpansion(num_point=4)


def test_with_a_proxy_loss_the_points_train_the_proxies_in_a_separate_term():
    torch.manual_seed(0)
    inner = losses.ProxyAnchorLoss(4, 24).to(DEVICE).double()
    wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
        inner, num_points=4, min_share=0.5, max_share=0.5, warmup_iterations=0,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    x, labels = batch()
    x.requires_grad_()
    loss = wrapped(x, labels)
    # by hand: the plain loss plus aug_weight times the loss of the points alone
    replay = pml_sft.SphericalEmbeddingExpansion(
        4, 0.5, 0.5, generator=torch.Generator().manual_seed(1)
    )
    points, point_labels, _ = replay.augment(x, labels, inner.proxies)
    expected = inner(x, labels) + 0.2 * inner(points, point_labels)
    torch.testing.assert_close(loss, expected)
    # the proxies' gradient points elsewhere than the plain loss's; the
    # embeddings' is the plain loss's (the points are detached)
    grads = []
    for fn in (wrapped, inner):
        inner.zero_grad()
        x.grad = None
        torch.manual_seed(0)
        fn(x, labels).backward()
        grads.append((inner.proxies.grad.clone(), x.grad.clone()))
    (proxies_aug, x_aug), (proxies_plain, x_plain) = grads
    cos = torch.nn.functional.cosine_similarity(
        proxies_aug.flatten(), proxies_plain.flatten(), dim=0
    )
    assert cos < 1 - 1e-6
    torch.testing.assert_close(x_aug, x_plain)


@pytest.mark.parametrize(
    "loss,miner",
    [
        (losses.MultiSimilarityLoss, miners.MultiSimilarityMiner),
        (losses.ContrastiveLoss, None),
    ],
)
def test_with_a_pair_loss_the_points_join_the_batch_and_move_its_gradient(loss, miner):
    wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
        loss(), miner() if miner else None, num_points=4, min_share=0.5,
        max_share=0.5, warmup_iterations=0,
    )  # fmt: skip
    x, labels = batch()
    grads = []
    for fn in (
        wrapped,
        lambda e, y: wrapped.loss(e, y, miner()(e, y) if miner else None),
    ):
        e = x.clone().requires_grad_()
        fn(e, labels).backward()
        grads.append(e.grad)
    assert wrapped.num_augmented == 8 * 4
    cos = torch.nn.functional.cosine_similarity(
        grads[0].flatten(), grads[1].flatten(), dim=0
    )
    assert cos < 1 - 1e-6


def test_aug_weight_is_for_proxy_losses_only():
    # with a pair loss the points join the batch: no separate term to weigh, so a
    # weight would change nothing (the tuning's first grid found three identical
    # runs); it is refused, naming why
    with pytest.raises(ValueError, match="aug_weight weighs the separate term"):
        pml_sft.SphericalEmbeddingExpansionLoss(
            losses.MultiSimilarityLoss(), aug_weight=0.4, warmup_iterations=0
        )
    pair = pml_sft.SphericalEmbeddingExpansionLoss(
        losses.MultiSimilarityLoss(), warmup_iterations=0
    )
    proxy = pml_sft.SphericalEmbeddingExpansionLoss(
        losses.ProxyAnchorLoss(4, 24), aug_weight=0.4, warmup_iterations=0
    )
    default = pml_sft.SphericalEmbeddingExpansionLoss(
        losses.ProxyAnchorLoss(4, 24), warmup_iterations=0
    )
    assert (pair.aug_weight, proxy.aug_weight, default.aug_weight) == (None, 0.4, 0.2)
    assert "aug_weight" not in pair._record_these
    with pytest.raises(ValueError, match="aug_weight weighs"):  # class weights too
        pml_sft.SphericalEmbeddingExpansionLoss(
            losses.ArcFaceLoss(4, 24), aug_weight=0.4, warmup_iterations=0
        )


def test_min_share_needs_the_length_of_training():
    # without total_iterations the largest share is expanded at once
    with pytest.raises(ValueError, match="min_share .* needs total_iterations"):
        pml_sft.SphericalEmbeddingExpansionLoss(
            losses.MultiSimilarityLoss(), min_share=0.3, warmup_iterations=0
        )
    wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
        losses.MultiSimilarityLoss(), min_share=0.3, total_iterations=10
    )
    assert wrapped.augmenter.min_share == 0.3
    # the default start, 0.04, follows a smaller max_share; without the length of
    # training the largest share is expanded at once
    for total in (None, 10):
        wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
            losses.MultiSimilarityLoss(),
            max_share=0.02,
            total_iterations=total,
            warmup_iterations=0,
        )
        assert wrapped.augmenter.min_share == 0.02
    with pytest.raises(ValueError, match="max_share=0 would expand no sample"):
        pml_sft.SphericalEmbeddingExpansionLoss(
            losses.MultiSimilarityLoss(), max_share=0, warmup_iterations=0
        )


def test_the_share_grows_over_the_augmenting_phase():
    wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
        losses.ContrastiveLoss(), num_points=2, total_iterations=40
    )
    x, labels = batch(classes=8, per_class=4)
    seen = []
    for _ in range(40):
        wrapped(x.float().requires_grad_(), labels)
        seen.append(wrapped.augmenter.progress)
    assert seen[20] == pytest.approx(1 / 20) and seen[-1] == pytest.approx(1.0)
    assert wrapped.augmenter.num_expanded == round(0.4 * 32)
    assert math.isclose(wrapped.augmenter.share(), 0.4)


def test_a_batch_without_pairs_or_mixed_dtypes_does_not_crash():
    # no class with two samples (and no proxies): nothing to expand, no error
    wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
        losses.ContrastiveLoss(), num_points=4, warmup_iterations=0
    )
    wrapped(torch.randn(4, 24, device=DEVICE), torch.arange(4, device=DEVICE))
    assert wrapped.num_augmented == 0
    # float64 embeddings with float32 proxies
    inner = losses.ProxyAnchorLoss(4, 24).to(DEVICE)
    wrapped = pml_sft.SphericalEmbeddingExpansionLoss(
        inner, num_points=4, min_share=0.5, max_share=0.5, warmup_iterations=0
    )
    x, labels = batch()
    wrapped(x.requires_grad_(), labels).backward()
    assert wrapped.num_augmented == 8 * 4


def test_its_own_wrapper_is_required_and_a_small_share_still_expands_one():
    with pytest.raises(ValueError, match="use SphericalEmbeddingExpansionLoss"):
        pml_sft.FeatureTransformLoss(
            losses.ContrastiveLoss(),
            pml_sft.SphericalEmbeddingExpansion(4),
            warmup_iterations=0,
        )
    see = pml_sft.SphericalEmbeddingExpansion(2, 0.01, 0.01)  # 0.01 x 8 rounds to 0
    x, labels = batch(classes=2)
    see.augment(x, labels)
    assert see.num_expanded == 1


def test_the_harness_ramps_the_share_over_training():
    from benchmarks import registry, train

    cfg = train.RunConfig.make(
        loss="proxyanchor", method="see", embedding_size=32, epochs=4,
        warmup_epochs=2, ramp_epochs=1,
    )  # fmt: skip
    objective, _ = registry.build_objective(cfg, 8, 10, torch.Generator())
    assert objective.total_iterations == 40 and objective.warmup_iterations == 20
    small = train.RunConfig.make(loss="proxyanchor", method="see", embedding_size=16)
    with pytest.raises(ValueError, match="at least 18 dimensions"):
        registry.build_objective(small, 8, 10, None)


def test_a_proxy_loss_inside_multiple_losses_is_refused():
    # the points would expand around batch means and skip the proxies' own term
    inner = losses.MultipleLosses([losses.ProxyAnchorLoss(4, 24)])
    with pytest.raises(ValueError, match="wrap the proxy loss itself"):
        pml_sft.SphericalEmbeddingExpansionLoss(inner, warmup_iterations=0)
    # a refused per-row loss inside MultipleLosses is refused too
    inner = losses.MultipleLosses([losses.SphereFaceLoss(4, 24)])
    with pytest.raises(ValueError, match="cannot change the training signal of"):
        pml_sft.SphericalEmbeddingExpansionLoss(inner, warmup_iterations=0)


def test_an_evaluation_leaves_the_generator_as_it_was():
    see = pml_sft.SphericalEmbeddingExpansion(
        2, 0.5, 0.5, generator=torch.Generator().manual_seed(2)
    )
    x, labels = batch()
    state = see.generator.get_state()
    with torch.no_grad():
        see(x, labels)
    see.eval()
    see(x, labels)
    assert torch.equal(see.generator.get_state(), state)
    see.train()
    see(x, labels)
    assert not torch.equal(see.generator.get_state(), state)
