"""Embedding Expansion, Symmetrical Synthesis and Proxy Synthesis: against references
written out by hand in float64, their properties and edge cases, and that each
changes the losses it is meant for."""

import itertools

import pytest
import torch
from pytorch_metric_learning import losses, miners

import pml_sft
from pml_sft import (
    EmbeddingExpansion,
    EmbeddingExpansionLoss,
    ProxySynthesis,
    ProxySynthesisLoss,
    SymmetricalSynthesis,
    SymmetricalSynthesisLoss,
)

from .helpers import DEVICE


def batch(seed=0, n=12, d=6, classes=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.arange(n) % classes
    return x.to(DEVICE), y.to(DEVICE)


def unit(v):
    return v / v.norm()


def test_embedding_expansion_matches_the_segment_points_written_out():
    x, y = batch()
    aug, aug_labels, sources = EmbeddingExpansion(num_points=3)(x, y)
    expected = []
    for i, j in itertools.combinations(range(len(y)), 2):
        if y[i] == y[j]:
            for k in (1, 2, 3):
                t = k / 4
                expected.append((unit((1 - t) * unit(x[i]) + t * unit(x[j])), y[i], i))
    assert aug.shape == (len(expected), x.shape[1])
    for row, (point, label, source) in enumerate(expected):
        assert torch.allclose(aug[row], point, atol=1e-12)
        assert aug_labels[row] == label and sources[row] == source


def test_symmetrical_synthesis_matches_explicit_reflection_matrices():
    x, y = batch(1)
    aug, aug_labels, sources = SymmetricalSynthesis()(x, y)
    pairs = [
        (i, j) for i, j in itertools.combinations(range(len(y)), 2) if y[i] == y[j]
    ]
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=DEVICE)
    expected = []
    for i, j in pairs:  # b reflected about the axis through a: (2 a a^T - I) b
        a, b = unit(x[i]), unit(x[j])
        expected.append(((2 * torch.outer(a, a) - eye) @ b, j))
    for i, j in pairs:
        a, b = unit(x[i]), unit(x[j])
        expected.append(((2 * torch.outer(b, b) - eye) @ a, i))
    assert aug.shape[0] == len(expected)
    for row, (point, source) in enumerate(expected):
        assert torch.allclose(aug[row], point, atol=1e-12)
        assert sources[row] == source and aug_labels[row] == y[source]
    # reflections keep norms and the angle to the axis, and are involutions
    ones = torch.ones(len(aug), dtype=aug.dtype, device=aug.device)
    assert torch.allclose(aug.norm(dim=1), ones)
    a, b = unit(x[pairs[0][0]]), unit(x[pairs[0][1]])
    assert torch.allclose(aug[0] @ a, b @ a)
    pair = torch.stack([a, aug[0]])
    twice = SymmetricalSynthesis()(pair, torch.tensor([0, 0], device=DEVICE))[0]
    assert torch.allclose(twice[0], b, atol=1e-12)


@pytest.mark.parametrize("augmenter", [EmbeddingExpansion(), SymmetricalSynthesis()])
def test_pair_augmenters_pass_gradients_to_both_members(augmenter):
    x, y = batch(2, n=4, d=3, classes=2)
    x.requires_grad_()

    def first_point(z):
        return augmenter(z, y)[0]

    assert torch.autograd.gradcheck(first_point, (x,))
    out = first_point(x)
    out.sum().backward()
    pair_rows = {0, 2}  # the first same-class pair
    assert all(x.grad[r].abs().sum() > 0 for r in pair_rows)


@pytest.mark.parametrize("augmenter", [EmbeddingExpansion(), SymmetricalSynthesis()])
def test_pair_augmenters_edge_cases(augmenter):
    d = 4
    # one-sample classes, one class of one, an empty batch: nothing to pair
    for labels in (torch.arange(5), torch.tensor([3])):
        aug, aug_labels, sources = augmenter(torch.randn(len(labels), d), labels)
        assert aug.shape == (0, d) and len(aug_labels) == len(sources) == 0
    aug, _, _ = augmenter(torch.randn(0, d), torch.zeros(0, dtype=torch.long))
    assert aug.shape == (0, d)
    # identical and opposite members
    a = torch.nn.functional.normalize(torch.randn(1, d), dim=1)
    aug, _, _ = augmenter(torch.cat([a, a]), torch.tensor([0, 0]))
    assert torch.allclose(aug, a.expand_as(aug), atol=1e-6)
    aug, _, _ = augmenter(torch.cat([a, -a]), torch.tensor([0, 0]))
    if isinstance(augmenter, EmbeddingExpansion):  # the midpoint has no direction
        assert aug.shape[0] == 2 and torch.isfinite(aug).all()
    else:  # a point on the axis stays: -a about a is -a, a about -a is a
        assert torch.allclose(aug, torch.cat([-a, a]), atol=1e-6)
    # half precision: unit rows in float16
    x = torch.randn(8, d).half()
    aug, _, _ = augmenter(x, torch.arange(8) % 2)
    assert aug.dtype == torch.float16
    assert torch.allclose(aug.float().norm(dim=1), torch.ones(len(aug)), atol=1e-3)


def test_embedding_expansion_drops_points_without_a_direction():
    a = torch.nn.functional.normalize(torch.randn(1, 5, dtype=torch.float64), dim=1)
    aug, _, _ = EmbeddingExpansion(num_points=1)(
        torch.cat([a, -a]), torch.tensor([0, 0])
    )
    assert aug.shape == (0, 5)  # the one point is the midpoint, 0


def test_proxy_synthesis_mixes_pairs_of_different_classes_and_their_proxies():
    x, y = batch(3, n=10, classes=4)
    proxies = torch.randn(4, x.shape[1], dtype=torch.float64, device=DEVICE)
    augmenter = ProxySynthesis(alpha=0.4, mu=1.0)
    torch.manual_seed(0)
    aug, aug_proxies, sources = augmenter(x, y, proxies)
    lam = augmenter.mix_weight
    assert 0 <= lam <= 1 and len(aug) == len(x)  # mu = 1: every row
    assert sorted(sources.tolist()) == list(range(len(x)))
    for row, s in enumerate(sources.tolist()):
        # some partner of another class gives this sample and this proxy
        matches = [
            j
            for j in range(len(x))
            if y[j] != y[s]
            and torch.allclose(
                aug[row], unit(lam * unit(x[s]) + (1 - lam) * unit(x[j]))
            )
        ]
        assert matches, row
        j = matches[0]
        p = unit(lam * unit(proxies[y[s]]) + (1 - lam) * unit(proxies[y[j]]))
        assert torch.allclose(aug_proxies[row], p)
    half = ProxySynthesis(mu=0.5)(x, y, proxies)[0]
    assert len(half) == 5


def test_proxy_synthesis_edge_cases_and_bad_options():
    proxies = torch.randn(3, 4)
    aug, aug_proxies, _ = ProxySynthesis()(
        torch.randn(5, 4), torch.zeros(5).long(), proxies
    )
    assert aug.shape == aug_proxies.shape == (0, 4)  # one class: no partner
    with pytest.raises(ValueError, match="mu"):
        ProxySynthesis(mu=1.5)
    with pytest.raises(ValueError, match="alpha"):
        ProxySynthesis(alpha=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ProxySynthesis()(torch.randn(2, 4), torch.tensor([0, 3]), proxies)
    with pytest.raises(ValueError, match="at least 2 dimensions"):  # as every augmenter
        ProxySynthesis()(torch.randn(2, 1), torch.tensor([0, 1]), torch.randn(3, 1))


@pytest.mark.parametrize(
    "make", [lambda: losses.ProxyAnchorLoss(4, 6), lambda: losses.ProxyNCALoss(4, 6)]
)
def test_proxy_synthesis_loss_is_the_loss_over_real_and_synthetic_classes(make):
    # reference: a fresh loss with C + M classes whose proxies are the real ones
    # followed by the synthetic ones, on the batch plus the synthetic samples
    torch.manual_seed(1)
    inner = make()
    x, y = batch(4, n=8, classes=4, dtype=torch.float32)
    wrapped = ProxySynthesisLoss(inner, warmup_iterations=0).to(DEVICE)
    torch.manual_seed(5)
    e = x.clone().requires_grad_()
    loss = wrapped(e, y)
    loss.backward()
    torch.manual_seed(5)  # the same draws: the same partners and mix weight
    e_ref = x.clone().requires_grad_()
    aug, aug_proxies, _ = ProxySynthesis().augment(e_ref, y, inner.proxies)
    reference = type(inner)(4 + len(aug), 6).to(DEVICE)
    reference.proxies.data = torch.cat([inner.proxies, aug_proxies]).detach()
    labels = torch.cat([y, 4 + torch.arange(len(aug), device=DEVICE)])
    expected = reference(torch.cat([e_ref, aug]), labels)
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(e.grad, e_ref.grad, atol=1e-5)
    # the real proxies got gradients through the synthetic ones, and are unchanged
    assert inner.proxies.grad is not None and inner.proxies.shape == (4, 6)
    assert inner.proxies.shape == (4, 6)
    assert len(getattr(inner, "proxy_labels", range(4))) == 4


def test_proxy_synthesis_loss_refuses_losses_without_known_proxies():
    with pytest.raises(ValueError, match="ProxyAnchorLoss"):
        ProxySynthesisLoss(losses.MultiSimilarityLoss())
    with pytest.raises(ValueError, match="NaN or inf"):
        x, y = batch(0, dtype=torch.float32)
        x[0, 0] = float("nan")
        wrapped = ProxySynthesisLoss(losses.ProxyAnchorLoss(3, 6), warmup_iterations=0)
        wrapped.to(DEVICE)(x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        x, y = batch(0, dtype=torch.float32)
        wrapped = ProxySynthesisLoss(losses.ProxyAnchorLoss(3, 6), warmup_iterations=0)
        wrapped.to(DEVICE)(x, y + 1)


def augmentation_changes(wrapped, x, y):
    """The wrapped loss and its gradient differ from the plain loss's (same seed)."""
    outcomes = []
    for fn in (wrapped, wrapped.loss):
        torch.manual_seed(3)
        e = x.clone().requires_grad_()
        out = fn(e, y)
        out.backward()
        outcomes.append((out.detach(), e.grad))
    (a, ga), (b, gb) = outcomes
    return not (torch.allclose(a, b) and torch.allclose(ga, gb))


PAIR_LOSSES = {
    "multisimilarity": lambda: (
        losses.MultiSimilarityLoss(),
        miners.MultiSimilarityMiner(epsilon=0.1),
    ),
    "triplet-semihard": lambda: (
        losses.TripletMarginLoss(margin=0.1),
        miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"),
    ),
    "contrastive": lambda: (losses.ContrastiveLoss(pos_margin=0, neg_margin=0.5), None),
}


@pytest.mark.parametrize("wrapper", [EmbeddingExpansionLoss, SymmetricalSynthesisLoss])
@pytest.mark.parametrize("loss", list(PAIR_LOSSES))
def test_pair_augmentation_changes_the_losses_it_is_compared_on(wrapper, loss):
    inner, miner = PAIR_LOSSES[loss]()
    x, y = batch(5, n=16, d=8, classes=4, dtype=torch.float32)
    wrapped = wrapper(inner, miner, warmup_iterations=0, collect_stats=True)
    assert augmentation_changes(wrapped, x, y)
    assert wrapped.num_augmented > 0


@pytest.mark.parametrize(
    "make",
    [lambda: losses.ProxyAnchorLoss(4, 8), lambda: losses.NormalizedSoftmaxLoss(4, 8)],
)
def test_proxy_synthesis_changes_the_proxy_losses(make):
    torch.manual_seed(0)
    wrapped = ProxySynthesisLoss(make(), warmup_iterations=0, collect_stats=True)
    wrapped.to(DEVICE)
    x, y = batch(6, n=16, d=8, classes=4, dtype=torch.float32)
    assert augmentation_changes(wrapped, x, y)
    assert wrapped.num_augmented == 16


def test_family_is_exported_and_follows_the_schedule():
    for name in (
        "EmbeddingExpansion",
        "SymmetricalSynthesis",
        "ProxySynthesis",
        "EmbeddingExpansionLoss",
        "SymmetricalSynthesisLoss",
        "ProxySynthesisLoss",
        "IconThemesDataset",
    ):
        assert name in pml_sft.__all__ and hasattr(pml_sft, name)
    # total_iterations=8: warm-up 4, then the weight ramps up over 2
    wrapped = EmbeddingExpansionLoss(losses.ContrastiveLoss(), total_iterations=8)
    x, y = batch(0, dtype=torch.float32)
    seen, weights = [], []
    for _ in range(8):
        wrapped(x.clone().requires_grad_(), y)
        seen.append(wrapped.num_augmented)
        weights.append(wrapped.current_aug_weight)
    assert weights == [0.0] * 4 + [0.5] + [1.0] * 3
    assert seen[:4] == [0] * 4 and min(seen[4:]) > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: EmbeddingExpansionLoss(losses.ContrastiveLoss(), **kw),
        lambda **kw: SymmetricalSynthesisLoss(losses.ContrastiveLoss(), **kw),
        lambda **kw: ProxySynthesisLoss(losses.ProxyAnchorLoss(3, 6), **kw),
    ],
    ids=["EmbeddingExpansionLoss", "SymmetricalSynthesisLoss", "ProxySynthesisLoss"],
)
def test_family_wrappers_need_a_schedule(make):
    with pytest.raises(ValueError, match="total_iterations.*warmup_iterations"):
        make()
    assert make(warmup_iterations=0).warmup_iterations == 0
    assert make(total_iterations=8).warmup_iterations == 4


def test_proxy_synthesis_composes_with_the_proxy_losses_and_refuses_the_rest():
    from . import compat_matrix as cm

    for name in cm.exported_losses():
        outcome = cm.proxy_synthesis_outcome(name)
        if name in pml_sft.losses.PROXY_PARAMETERS:
            assert outcome == "works", (name, outcome)
        else:
            assert outcome.startswith("refused") and "proxies" in outcome, name
