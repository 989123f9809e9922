"""Embedding mixup (Metrix): mixed rows against a float64 reference, partners of
another class, the two-label loss by hand, and the gradient's direction."""

import pytest
import torch
from pytorch_metric_learning import losses, miners

import pml_sft

from .helpers import DEVICE


def batch(classes=4, per_class=4, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, d, generator=g, dtype=dtype)
    return x.to(DEVICE), torch.arange(classes).repeat_interleave(per_class).to(DEVICE)


def test_mixed_rows_are_convex_mixes_of_two_classes_unit_directions():
    x, labels = batch()
    mix = pml_sft.EmbeddingMixup(0.4, generator=torch.Generator().manual_seed(1))
    mixed, first_labels, rows = mix(x, labels)
    assert len(rows) == len(labels)  # every row has a partner of another class
    unit = torch.nn.functional.normalize(x, dim=1)
    lam, second = mix.lam, mix.partner_labels
    assert 0 <= lam <= 1 and (second != first_labels).all()
    for i, row in enumerate(rows.tolist()):
        # the partner: the one row of the second class whose mix with this row,
        # normalised, is the mixed row
        mixes = torch.nn.functional.normalize(lam * unit[row] + (1 - lam) * unit, dim=1)
        matches = (mixes - mixed[i]).norm(dim=1) < 1e-9
        assert matches.sum() == 1 and labels[matches][0] == second[i]
        assert first_labels[i] == labels[row]
    torch.testing.assert_close(mixed.norm(dim=1), torch.ones(len(rows)).double())


def test_the_loss_is_both_labels_weighted_by_lam():
    x, labels = batch()
    inner = losses.ContrastiveLoss()
    wrapped = pml_sft.EmbeddingMixupLoss(
        inner, warmup_iterations=0, generator=torch.Generator().manual_seed(2)
    )
    loss = wrapped(x, labels)
    replay = pml_sft.EmbeddingMixup(generator=torch.Generator().manual_seed(2))
    mixed, first, _ = replay(x, labels)
    all_x = torch.cat([x, mixed])
    as_first = inner(all_x, torch.cat([labels, first]))
    as_second = inner(all_x, torch.cat([labels, replay.partner_labels]))
    expected = replay.lam * as_first + (1 - replay.lam) * as_second
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
        lambda: (losses.ContrastiveLoss(), None),
        lambda: (losses.NormalizedSoftmaxLoss(4, 8).double(), None),
    ],
)
def test_mixup_changes_the_gradients_direction(make):
    inner, miner = make()
    wrapped = pml_sft.EmbeddingMixupLoss(inner.to(DEVICE), miner, warmup_iterations=0)
    x, labels = batch()
    grads = []
    for fn in (
        wrapped,
        lambda e, y: inner(e, y, miner(e, y) if miner is not None else None),
    ):
        e = x.clone().requires_grad_()
        fn(e, labels).backward()
        grads.append(e.grad.flatten())
    assert torch.nn.functional.cosine_similarity(*grads, dim=0) < 1 - 1e-6


def test_one_class_gives_nothing_and_options_are_checked():
    mix = pml_sft.EmbeddingMixup()
    out, _, rows = mix(*batch(classes=1))
    assert len(out) == 0 and len(rows) == 0
    for alpha in (0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
            pml_sft.EmbeddingMixup(alpha)
    with pytest.raises(TypeError, match="did you mean 'alpha'"):
        pml_sft.EmbeddingMixup(alpah=1.0)


def test_reproducible_from_its_generator_and_resumed_from_its_state():
    x, labels = batch()
    a = pml_sft.EmbeddingMixup(generator=torch.Generator().manual_seed(5))
    b = pml_sft.EmbeddingMixup(generator=torch.Generator().manual_seed(5))
    assert torch.equal(a(x, labels)[0], b(x, labels)[0])
    state = a.state_dict()
    first = a(x, labels)[0]
    b.load_state_dict(state)
    assert torch.equal(first, b(x, labels)[0])


def test_refused_under_torch_distributed(monkeypatch):
    from pml_sft.utils import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="not yet supported under torch.distributed"):
        pml_sft.EmbeddingMixup()(*batch())


def test_do_nothing_reducer_keeps_both_labellings_and_the_plain_batch():
    from pytorch_metric_learning.reducers import DoNothingReducer

    wrapped = pml_sft.EmbeddingMixupLoss(
        losses.ContrastiveLoss(reducer=DoNothingReducer()),
        warmup_iterations=0,
        ramp_iterations=4,
    )
    x, labels = batch(classes=4, per_class=2)
    out = wrapped(x, labels)  # weight 0.25: mixed and plain entries
    assert {"pos_loss", "pos_loss_second", "pos_loss_plain"} <= set(out)
    plain = losses.ContrastiveLoss(reducer=DoNothingReducer())(x, labels)
    pairs = len(plain["pos_loss"]["losses"])
    assert len(out["pos_loss_plain"]["losses"]) == pairs  # the plain batch's pairs
    assert len(out["pos_loss_second"]["losses"]) > pairs


def test_only_its_own_wrapper_trains_the_two_labels():
    # FeatureTransformLoss would train a mixed row as its first class only
    with pytest.raises(ValueError, match="use EmbeddingMixupLoss"):
        pml_sft.FeatureTransformLoss(
            losses.MultiSimilarityLoss(), pml_sft.EmbeddingMixup(), warmup_iterations=0
        )


def test_a_mix_of_opposite_rows_is_left_out_and_gradients_stay_bounded():
    # lam within about 1e-5 of 0.5: the mix of x and -x has a norm of about 1e-5,
    # below float32's resolution of a direction (eps ** 0.5, as Proxy Synthesis)
    x = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    labels = torch.tensor([0, 1])
    mix = pml_sft.EmbeddingMixup(1e9, generator=torch.Generator().manual_seed(0))
    mixed, _, rows = mix(x.to(DEVICE), labels.to(DEVICE))
    assert len(mixed) == len(rows) == 0 and mix.num_augmented == 0
    # with a third, orthogonal class the mixes that are not opposite remain, and
    # the wrapped loss's gradient stays of the plain loss's order
    x = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, 0.99, 0.1]])
    labels = torch.tensor([0, 1, 2, 2])
    for seed in range(5):
        wrapped = pml_sft.EmbeddingMixupLoss(
            losses.ContrastiveLoss(),
            alpha=1e9,
            warmup_iterations=0,
            generator=torch.Generator().manual_seed(seed),
        )
        e = x.clone().to(DEVICE).requires_grad_()
        wrapped(e, labels.to(DEVICE)).backward()
        assert e.grad.abs().max() < 10


def test_an_empty_batch_gives_nothing_and_an_evaluation_keeps_the_generator():
    mix = pml_sft.EmbeddingMixup(generator=torch.Generator().manual_seed(3))
    out, out_labels, rows = mix(torch.zeros(0, 8, device=DEVICE), torch.zeros(0).long())
    assert out.shape == (0, 8) and len(out_labels) == len(rows) == 0
    x, labels = batch()
    for evaluation in ("eval", "no_grad"):
        state = mix.generator.get_state()
        if evaluation == "eval":
            mix.eval()
            mix(x, labels)
            mix.train()
        else:
            with torch.no_grad():
                mix(x, labels)
        assert torch.equal(mix.generator.get_state(), state), evaluation
    mix(x, labels)  # training draws
    assert not torch.equal(mix.generator.get_state(), state)
