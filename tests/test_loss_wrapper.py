import re

import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers, regularizers

from pml_sft import (
    FeatureTransformLoss,
    FeatureTranslation,
    FeatureTranslationLoss,
    MovingAverageClassCenters,
    SFTLoss,
    SphericalFeatureTransform,
)
from pml_sft.contrib import AblationLoss
from pml_sft.upstream import sft_loss as upstream

from .helpers import DEVICE, hardest_extra


def _batch(dtype=torch.float32, classes=4, per_class=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, d, generator=g, dtype=dtype).to(DEVICE)
    y = torch.arange(classes).repeat_interleave(per_class).to(DEVICE)
    return x, y


def _gen(seed=0):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _recording(loss):
    """``loss`` (a supported PML loss, so that the wrappers accept it), remembering
    in ``loss.seen`` the indices_tuple of its last call, in ``loss.embeddings`` its
    embeddings and in ``loss.calls`` the (labels, indices_tuple, output) of every
    call."""
    original, loss.calls = loss.forward, []

    def forward(embeddings, labels, indices_tuple=None, *args):
        loss.seen, loss.embeddings = indices_tuple, embeddings.detach()
        out = original(embeddings, labels, indices_tuple, *args)
        loss.calls.append((labels, indices_tuple, out))
        return out

    loss.forward = forward
    return loss


def test_equals_inner_loss_on_the_enlarged_batch(dtype):
    x, y = _batch(dtype)
    inner = losses.MultiSimilarityLoss()
    wrapped = FeatureTransformLoss(
        inner, SphericalFeatureTransform(generator=_gen()), warmup_iterations=0
    )
    aug, aug_labels, _ = SphericalFeatureTransform(generator=_gen())(x, y)
    expected = inner(torch.cat([x, aug]), torch.cat([y, aug_labels]))
    assert torch.allclose(wrapped(x, y), expected)
    assert wrapped.num_augmented == len(x)


def test_single_class_batch_returns_plain_loss():
    x, y = _batch(classes=1, per_class=6)
    inner = losses.ContrastiveLoss()
    wrapped = SFTLoss(inner, collect_stats=True, warmup_iterations=0)
    assert torch.equal(wrapped(x, y), inner(x, y))
    assert wrapped.num_augmented == 0 and wrapped.current_aug_weight == 1.0


def test_warmup_ramp_and_weight():
    x, y = _batch()
    inner = losses.MultiSimilarityLoss()
    plain = inner(x, y)
    aug, aug_labels, _ = SphericalFeatureTransform(generator=_gen())(x, y)
    full = inner(torch.cat([x, aug]), torch.cat([y, aug_labels]))
    wrapped = AblationLoss(
        inner,
        SphericalFeatureTransform(),
        aug_weight=0.8,
        warmup_iterations=2,
        ramp_iterations=4,
    )
    assert torch.equal(wrapped(x, y), plain) and torch.equal(wrapped(x, y), plain)
    wrapped.augmenter.generator = _gen()
    w = 0.8 * 1 / 4
    got = wrapped(x, y)
    assert wrapped.current_aug_weight == pytest.approx(w)
    assert torch.allclose(got, (1 - w) * plain + w * full)
    for _ in range(10):
        wrapped(x, y)
    assert wrapped.current_aug_weight == pytest.approx(0.8)


def test_eval_mode_and_no_grad_do_not_augment_or_count():
    x, y = _batch()
    inner = losses.TripletMarginLoss()
    generator = _gen()
    wrapped = SFTLoss(inner, warmup_iterations=0, generator=generator).eval()
    draws = generator.get_state()
    assert torch.equal(wrapped(x, y), inner(x, y))
    assert int(wrapped.iteration) == 0 and wrapped.current_aug_weight == 0
    wrapped.train()
    with torch.no_grad():
        assert torch.equal(wrapped(x, y), inner(x, y))
    assert int(wrapped.iteration) == 0 and wrapped.current_aug_weight == 0
    assert torch.equal(generator.get_state(), draws)  # nor draw
    wrapped(x, y)  # the first iteration
    assert int(wrapped.iteration) == 1 and wrapped.num_augmented == len(x)


def test_a_call_that_does_not_augment_records_no_augmented_samples():
    x, y = _batch()
    wrapped = SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    wrapped(x, y)
    assert (wrapped.num_augmented, wrapped.current_aug_weight) == (len(x), 1.0)
    wrapped.eval()
    wrapped(x, y)  # num_augmented is always recorded, so not left from the last call
    assert (wrapped.num_augmented, wrapped.current_aug_weight) == (0, 0.0)


def test_inner_miner_mines_the_enlarged_batch_and_keeps_outer_indices():
    x, y = _batch()
    inner = _recording(losses.ContrastiveLoss())
    outer = miners.TripletMarginMiner(margin=10)(x, y)
    miner = miners.MultiSimilarityMiner(epsilon=10)
    wrapped = SFTLoss(inner, miner=miner, warmup_iterations=0)
    wrapped(x, y, outer)
    labels, (a1, p, a2, n), _ = inner.calls[-1]
    assert len(labels) == 2 * len(x)
    assert (a1 >= len(x)).any() and (p >= len(x)).any()
    # the outer triplets, converted to pairs, are at the end
    k = len(outer[0])
    assert torch.equal(a1[-k:], outer[0]) and torch.equal(n[-k:], outer[2])


@pytest.mark.parametrize("num_targets", [1, 2])
@pytest.mark.parametrize("num_outer", [16, 40])
def test_outer_triplets_without_miner_get_each_synthetic_rows_hardest_partners(
    num_targets, num_outer
):
    x, y = _batch()
    inner = _recording(losses.TripletMarginLoss())
    outer = tuple(t[:num_outer] for t in miners.TripletMarginMiner(margin=10)(x, y))
    wrapped = SFTLoss(inner, None, num_targets, warmup_iterations=0, generator=_gen())
    wrapped(x, y, outer)
    labels, (a, p, neg), _ = inner.calls[-1]
    k, n = len(outer[0]), len(x)
    assert len(labels) == (1 + num_targets) * n
    assert all(torch.equal(t[:k], o) for t, o in zip((a, p, neg), outer))  # as given
    # as many per synthetic row as the outer set holds per real row, hardest first
    expected = hardest_extra(inner.embeddings, labels, n, k, k, triplets=True)
    assert len(expected[0]) == round(k * num_targets)  # round(k * m / n), m = kn
    got = sorted(zip(a[k:].tolist(), p[k:].tolist(), neg[k:].tolist()))
    assert got == sorted(zip(*expected))


def test_outer_pairs_without_miner_count_positive_and_negative_pairs_apart():
    x, y = _batch()
    inner = _recording(losses.ContrastiveLoss())
    a1, p, a2, n = miners.MultiSimilarityMiner(epsilon=10)(x, y)
    outer = (a1[:6], p[:6], a2[:20], n[:20])  # 6 positive and 20 negative pairs
    SFTLoss(inner, num_targets=2, warmup_iterations=0, generator=_gen())(x, y, outer)
    labels, tuples, _ = inner.calls[-1]
    assert len(labels) == 3 * len(x)
    assert all(torch.equal(t[: len(o)], o) for t, o in zip(tuples, outer))
    b1, q, b2, m_ = (t[len(o) :].tolist() for t, o in zip(tuples, outer))
    # 32 synthetic rows: round(6 * 32 / 16) = 12 positive pairs (none or one per
    # row) and 40 negative pairs (one or two per row), hardest partners first
    assert len(b1) == 12 and len(b2) == 40
    e1, eq, e2, em = hardest_extra(inner.embeddings, labels, len(x), 6, 20, False)
    assert sorted(zip(b1, q)) == sorted(zip(e1, eq))
    assert sorted(zip(b2, m_)) == sorted(zip(e2, em))
    # deterministic given the batch: the same targets give the same tuples
    again = _recording(losses.ContrastiveLoss())
    SFTLoss(again, num_targets=2, warmup_iterations=0, generator=_gen())(x, y, outer)
    assert all(torch.equal(u, v) for u, v in zip(again.seen, inner.seen))


@pytest.mark.parametrize("with_miner", [False, True])
def test_synthetic_roles(with_miner):
    x, y = _batch()
    n = len(x)
    miner = miners.MultiSimilarityMiner(epsilon=10) if with_miner else None
    inner = _recording(losses.ContrastiveLoss())
    sft, start = SphericalFeatureTransform(), dict(warmup_iterations=0)
    AblationLoss(inner, sft, miner, synthetic_role="partner", **start)(x, y)
    a1, p, a2, neg = inner.seen
    assert (a1 < n).all() and (a2 < n).all()
    assert (p >= n).any() and (neg >= n).any()
    AblationLoss(inner, sft, miner, synthetic_role="negative", **start)(x, y)
    a1, p, a2, neg = inner.seen
    assert (a1 < n).all() and (p < n).all() and (a2 < n).all()
    assert (neg >= n).any() and len(a1) > 0
    AblationLoss(inner, sft, miner, synthetic_role="any", **start)(x, y)
    if with_miner:
        assert (inner.seen[0] >= n).any()
    else:
        assert inner.seen is None  # all pairs, as PML does without indices


def test_role_restriction_of_triplets():
    from pml_sft.contrib import restrict_roles

    a = torch.tensor([0, 0, 5, 1, 1])
    p = torch.tensor([1, 6, 1, 0, 0])
    neg = torch.tensor([2, 2, 2, 7, 3])
    kept = restrict_roles((a, p, neg), 4, "partner")
    assert kept[0].tolist() == [0, 0, 1, 1]
    kept = restrict_roles((a, p, neg), 4, "negative")
    assert list(zip(*[t.tolist() for t in kept])) == [(0, 1, 2), (1, 0, 7), (1, 0, 3)]
    kept = restrict_roles((a, p, neg), 4, "negative", augmented_only=True)
    assert list(zip(*[t.tolist() for t in kept])) == [(1, 0, 7)]


def test_separate_objective():
    x, y = _batch()
    gen = torch.Generator().manual_seed(0)
    inner = _recording(losses.ContrastiveLoss())
    sft = SphericalFeatureTransform(generator=gen)
    wrapped = AblationLoss(
        inner, sft, objective="separate", aug_weight=0.5, warmup_iterations=0
    )
    total = wrapped(x, y)
    (y_plain, seen_plain, plain), (y_all, seen_aug, extra) = inner.calls
    assert len(y_plain) == len(x) and seen_plain is None and len(y_all) == 2 * len(x)
    a1, p, a2, neg = seen_aug  # every tuple involves an augmented row
    assert ((a1 >= len(x)) | (p >= len(x))).all()
    assert ((a2 >= len(x)) | (neg >= len(x))).all()
    assert torch.allclose(total, plain + 0.5 * extra)
    with pytest.raises(ValueError, match="objective"):
        AblationLoss(
            losses.ContrastiveLoss(),
            SphericalFeatureTransform(),
            objective="both",
            warmup_iterations=0,
        )
    AblationLoss(
        losses.ContrastiveLoss(),
        SphericalFeatureTransform(),
        objective="separate",
        aug_weight=2.0,
        warmup_iterations=0,
    )
    with pytest.raises(ValueError, match="aug_weight"):
        AblationLoss(
            losses.ContrastiveLoss(),
            SphericalFeatureTransform(),
            aug_weight=2.0,
            warmup_iterations=0,
        )


@pytest.mark.parametrize(
    "option", ["reducer", "distance", "embedding_regularizer", "embedding_reg_weight"]
)
def test_inner_loss_options_are_refused(option):
    value = {
        "reducer": reducers.SumReducer(),
        "distance": distances.LpDistance(),
        "embedding_regularizer": regularizers.LpRegularizer(),
        "embedding_reg_weight": 5.0,
    }[option]
    start = dict(warmup_iterations=0)
    # the wrapped loss's apply: the wrappers take none of them (a TypeError)
    with pytest.raises(TypeError, match=option):
        upstream.SFTLoss(losses.ContrastiveLoss(), **start, **{option: value})
    for wrapper in (SFTLoss, FeatureTranslationLoss):
        with pytest.raises(TypeError, match=option):
            wrapper(losses.ContrastiveLoss(), **start, **{option: value})
    with pytest.raises(TypeError, match=option):
        FeatureTransformLoss(
            losses.ContrastiveLoss(),
            SphericalFeatureTransform(),
            **start,
            **{option: value},
        )
    wrapped = SFTLoss(losses.ContrastiveLoss(), **start)
    assert not hasattr(wrapped, "reducer") and not hasattr(wrapped, "distance")


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="num_targetz"):
        SFTLoss(losses.ContrastiveLoss(), num_targetz=2, warmup_iterations=0)


@pytest.mark.parametrize(
    "wrapper", [SFTLoss, FeatureTranslationLoss, FeatureTransformLoss, AblationLoss]
)
def test_supported_losses_follow_pml_contract(wrapper):
    supported = wrapper.supported_losses()
    assert supported == upstream.SUPPORTED_LOSSES  # the one explicit list
    assert "MultiSimilarityLoss" in supported and "ProxyAnchorLoss" in supported
    assert not set(supported) & set(upstream.UNSUPPORTED_LOSSES)
    for name in supported:
        wrapper.check_loss_support(name)
    for name, reason in upstream.UNSUPPORTED_LOSSES.items():
        with pytest.raises(
            ValueError, match=f"cannot wrap {name}: {re.escape(reason)}"
        ):
            wrapper.check_loss_support(name)
    # anything else, a subclass of a supported loss included, is refused by name
    with pytest.raises(ValueError, match="cannot wrap MyLoss: it is not a tested"):
        wrapper.check_loss_support("MyLoss")


def test_loss_outside_the_list_and_nesting_are_refused():
    class MyContrastiveLoss(losses.ContrastiveLoss):
        pass

    with pytest.raises(ValueError, match="MyContrastiveLoss: it is not a tested loss"):
        SFTLoss(MyContrastiveLoss(), warmup_iterations=0)
    once = SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    for outer in (SFTLoss, FeatureTranslationLoss):
        with pytest.raises(ValueError, match="cannot wrap SFTLoss: it is SFTLoss"):
            outer(once, warmup_iterations=0)
    with pytest.raises(ValueError, match="cannot wrap SFTLoss"):
        FeatureTransformLoss(once, FeatureTranslation(), warmup_iterations=0)


def test_cross_batch_memory_is_refused_both_ways():
    memory = losses.CrossBatchMemory(losses.ContrastiveLoss(), 8, memory_size=64)
    with pytest.raises(ValueError, match="memory bank"):
        SFTLoss(memory, warmup_iterations=0)
    with pytest.raises(Exception, match="not supported for SFTLoss"):
        wrapped = SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
        losses.CrossBatchMemory(wrapped, 8)
    assert memory.queue_idx == 0


def _ema_sft(num_classes, size):
    return SphericalFeatureTransform(
        centers=MovingAverageClassCenters(num_classes, size)
    )


def test_state_dict_holds_iteration_and_centers():
    wrapped = FeatureTransformLoss(
        losses.ArcFaceLoss(4, 8), _ema_sft(4, 8), warmup_iterations=1
    ).to(DEVICE)
    x, y = _batch()
    wrapped(x, y)
    wrapped(x, y)
    state = wrapped.state_dict()
    assert int(state["iteration"]) == 2
    assert "augmenter.centers.centers" in state and "loss.W" in state
    fresh = FeatureTransformLoss(
        losses.ArcFaceLoss(4, 8), _ema_sft(4, 8), warmup_iterations=1
    ).to(DEVICE)
    fresh.load_state_dict(state)
    assert fresh.step == 2 and fresh.next_weight() == 1.0
    assert torch.equal(
        fresh.augmenter.centers.centers, wrapped.augmenter.centers.centers
    )
    # a state made with another schedule is refused, not silently re-timed
    for schedule in (dict(warmup_iterations=2), dict(total_iterations=4)):
        other = FeatureTransformLoss(
            losses.ArcFaceLoss(4, 8), _ema_sft(4, 8), **schedule
        )
        with pytest.raises(ValueError, match=r"the state's schedule .* \[1, 0\]"):
            other.load_state_dict(state)
        assert other.step == 0 and int(other.iteration) == 0


def test_sft_runs_the_upstream_step_and_only_feature_transform_takes_augmenters():
    x, y = _batch()
    start = dict(warmup_iterations=0)
    wrapped = SFTLoss(losses.ContrastiveLoss(), num_targets=3, **start)
    assert not hasattr(wrapped, "augmenter")
    assert (wrapped.num_targets, wrapped.transform) == (3, "rotation")
    translation = FeatureTranslationLoss(
        losses.ContrastiveLoss(), generator=_gen(), **start
    )
    assert not hasattr(translation, "augmenter")
    same = SFTLoss(
        losses.ContrastiveLoss(), transform="translation", generator=_gen(), **start
    )
    assert torch.equal(translation(x, y), same(x, y))
    with pytest.raises(
        TypeError,
        match="unexpected keyword argument .transform.: it belongs to SFTLoss",
    ):
        FeatureTranslationLoss(losses.ContrastiveLoss(), transform="rotation", **start)
    with pytest.raises(ValueError, match="transform must be"):
        SFTLoss(losses.ContrastiveLoss(), transform="scale", **start)
    with pytest.raises(TypeError, match="centers"):  # centres go to an augmenter
        SFTLoss(
            losses.ContrastiveLoss(), centers=MovingAverageClassCenters(4, 8), **start
        )
    with pytest.raises(TypeError, match="augmenter must be"):
        FeatureTransformLoss(losses.ContrastiveLoss(), torch.nn.Identity(), **start)


WRAPPERS = {
    "sft": lambda inner, **kw: SFTLoss(inner, **kw),
    "translation": lambda inner, **kw: FeatureTranslationLoss(inner, **kw),
    "transform": lambda inner, **kw: FeatureTransformLoss(
        inner, FeatureTranslation(), **kw
    ),
    "ablation": lambda inner, **kw: AblationLoss(
        inner, FeatureTranslation(), objective="separate", **kw
    ),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_a_schedule_is_required(wrapper):
    make = WRAPPERS[wrapper]
    # no start found from the loss curve any more: the user states the schedule
    for kwargs in ({}, dict(ramp_iterations=10)):
        with pytest.raises(ValueError, match="total_iterations .*warmup_iterations"):
            make(losses.ContrastiveLoss(), **kwargs)
    fixed = make(losses.ContrastiveLoss(), warmup_iterations=3)
    assert (fixed.warmup_iterations, fixed.ramp_iterations) == (3, 0)
    ramped = make(losses.ContrastiveLoss(), warmup_iterations=3, ramp_iterations=5)
    assert (ramped.warmup_iterations, ramped.ramp_iterations) == (3, 5)
    by_length = make(losses.ContrastiveLoss(), total_iterations=100)
    assert (by_length.warmup_iterations, by_length.ramp_iterations) == (50, 25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(warmup_iterations=-1), "warmup_iterations"),
        (dict(warmup_iterations=0, ramp_iterations=0.5), "ramp_iterations"),
        (dict(total_iterations=10.0), "total_iterations"),
        (dict(warmup_iterations=0, num_targets=0), "num_targets"),
        (dict(warmup_iterations=0, transform="scale"), "transform"),
        (dict(warmup_iterations=0, miner=miners.TripletMarginMiner()), "no miner"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTLoss(losses.PNPLoss(), **kwargs)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_miner_that_reads_the_batch_layout_is_refused(wrapper):
    # it would read triplets from (a, p, n, a, p, n, ...) rows of the enlarged batch
    with pytest.raises(ValueError, match="batch layout"):
        WRAPPERS[wrapper](
            losses.ContrastiveLoss(),
            miner=miners.EmbeddingsAlreadyPackagedAsTriplets(),
            warmup_iterations=0,
        )


@pytest.mark.parametrize("aug_weight", [1.5, -0.1])
def test_bad_ablation_weight(aug_weight):
    with pytest.raises(ValueError, match="aug_weight"):
        AblationLoss(
            losses.ContrastiveLoss(),
            SphericalFeatureTransform(),
            aug_weight=aug_weight,
            warmup_iterations=0,
        )


def test_bad_input_is_refused_before_the_inner_loss():
    x, y = _batch()
    wrapped = SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    with pytest.raises(ValueError, match="labels are required"):
        wrapped(x, None)
    with pytest.raises(ValueError, match="NaN or inf"):
        wrapped(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="zero vector"):
        wrapped(torch.zeros_like(x), y)


def test_do_nothing_reducer_keeps_both_terms_during_the_ramp():
    x, y = _batch()
    inner = losses.ContrastiveLoss(reducer=reducers.DoNothingReducer())
    plain = inner(x, y)
    full = SFTLoss(inner, warmup_iterations=0, generator=_gen())(x, y)
    assert set(full) == set(plain)  # full weight: the augmented loss's entries
    ramped = SFTLoss(inner, warmup_iterations=0, ramp_iterations=4, generator=_gen())
    mixed = ramped(x, y)
    w = ramped.current_aug_weight
    assert w == pytest.approx(1 / 4)
    assert set(mixed) == set(plain) | {k + "_plain" for k in plain}
    for name in plain:
        assert torch.allclose(mixed[name]["losses"], w * full[name]["losses"])
        got = mixed[name + "_plain"]
        assert torch.allclose(got["losses"], (1 - w) * plain[name]["losses"])
        assert got["reduction_type"] == plain[name]["reduction_type"]
        assert all(
            torch.equal(a, b) for a, b in zip(got["indices"], plain[name]["indices"])
        )
    sft = SphericalFeatureTransform()
    with pytest.raises(TypeError, match="DoNothingReducer"):
        AblationLoss(inner, sft, objective="separate", warmup_iterations=0)(x, y)


def test_moving_average_centers_across_batches_and_translation():
    g = _gen(3)
    translation = FeatureTranslation(
        centers=MovingAverageClassCenters(10, 8), target_pool="all", generator=g
    )
    wrapped = FeatureTransformLoss(
        losses.MultiSimilarityLoss(), translation, warmup_iterations=0
    ).to(DEVICE)
    for seed in range(3):
        x, y = _batch(classes=2, per_class=2, seed=seed)
        loss = wrapped(x, y + 2 * seed)
        assert torch.isfinite(loss)
    assert int((wrapped.augmenter.centers.num_updates > 0).sum()) == 6


def test_total_iterations_sets_the_validated_schedule():
    wrapped = SFTLoss(losses.ContrastiveLoss(), total_iterations=100)
    assert (wrapped.warmup_iterations, wrapped.ramp_iterations) == (50, 25)
    x, y = _batch()
    weights = []
    for _ in range(80):
        wrapped(x, y)
        weights.append(wrapped.current_aug_weight)
    assert weights[49] == 0 and weights[50] == pytest.approx(1 / 25)
    assert weights[74] == 1.0 and weights[79] == 1.0
    explicit = SFTLoss(
        losses.ContrastiveLoss(), total_iterations=100, ramp_iterations=0
    )
    assert (explicit.warmup_iterations, explicit.ramp_iterations) == (50, 0)
    plain = SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    assert (plain.warmup_iterations, plain.ramp_iterations) == (0, 0)
    with pytest.raises(ValueError, match="total_iterations"):
        SFTLoss(losses.ContrastiveLoss(), total_iterations=-1)
