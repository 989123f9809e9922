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

from .helpers import DEVICE


def _batch(dtype=torch.float32, classes=4, per_class=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, d, generator=g, dtype=dtype).to(DEVICE)
    y = torch.arange(classes).repeat_interleave(per_class).to(DEVICE)
    return x, y


def _gen(seed=0):
    return torch.Generator(device=DEVICE).manual_seed(seed)


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
    assert wrapped.num_augmented == 0 and wrapped.augmenter.num_augmented == 0


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


def test_eval_mode_does_not_augment_or_count():
    x, y = _batch()
    inner = losses.TripletMarginLoss()
    wrapped = SFTLoss(inner, warmup_iterations=0).eval()
    assert torch.equal(wrapped(x, y), inner(x, y))
    assert int(wrapped.iteration) == 0


def test_inner_miner_mines_the_enlarged_batch_and_keeps_outer_indices():
    x, y = _batch()
    seen = {}

    class Recording(losses.ContrastiveLoss):
        def forward(self, embeddings, labels, indices_tuple=None, *args):
            seen["n"], seen["indices"] = len(embeddings), indices_tuple
            return super().forward(embeddings, labels, indices_tuple, *args)

    outer = miners.TripletMarginMiner(margin=10)(x, y)
    miner = miners.MultiSimilarityMiner(epsilon=10)
    wrapped = SFTLoss(Recording(), miner=miner, warmup_iterations=0)
    wrapped(x, y, outer)
    a1, p, a2, n = seen["indices"]
    assert seen["n"] == 2 * len(x)
    assert (a1 >= len(x)).any() and (p >= len(x)).any()
    # the outer triplets, converted to pairs, are at the end
    k = len(outer[0])
    assert torch.equal(a1[-k:], outer[0]) and torch.equal(n[-k:], outer[2])


def test_outer_indices_without_miner_add_all_tuples_with_augmented_rows():
    x, y = _batch()
    seen = {}

    class Recording(losses.TripletMarginLoss):
        def forward(self, embeddings, labels, indices_tuple=None, *args):
            seen["indices"] = indices_tuple
            return super().forward(embeddings, labels, indices_tuple, *args)

    outer = miners.BatchHardMiner()(x, y)
    SFTLoss(Recording(), warmup_iterations=0)(x, y, outer)
    a, p, n = seen["indices"]
    k = len(outer[0])
    assert torch.equal(a[:k], outer[0])
    extra = torch.stack([a[k:], p[k:], n[k:]])
    assert ((extra >= len(x)).any(dim=0)).all() and extra.shape[1] > 0


class RecordingContrastive(losses.ContrastiveLoss):
    """Remembers the indices_tuple it was called with."""

    def forward(self, embeddings, labels, indices_tuple=None, *args):
        self.seen = indices_tuple
        return super().forward(embeddings, labels, indices_tuple, *args)


@pytest.mark.parametrize("with_miner", [False, True])
def test_synthetic_roles(with_miner):
    x, y = _batch()
    n = len(x)
    miner = miners.MultiSimilarityMiner(epsilon=10) if with_miner else None
    inner = RecordingContrastive()
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
    inner = RecordingContrastive()
    sft = SphericalFeatureTransform(generator=gen)
    wrapped = AblationLoss(
        inner, sft, objective="separate", aug_weight=0.5, warmup_iterations=0
    )
    calls = []
    original = inner.forward

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args[0].shape[0], inner.seen, out))
        return out

    inner.forward = recording
    total = wrapped(x, y)
    (n_plain, seen_plain, plain), (n_all, seen_aug, extra) = calls
    assert n_plain == len(x) and seen_plain is None and n_all == 2 * len(x)
    a1, p, a2, neg = seen_aug  # every tuple involves an augmented row
    assert ((a1 >= len(x)) | (p >= len(x))).all()
    assert ((a2 >= len(x)) | (neg >= len(x))).all()
    assert torch.allclose(total, plain + 0.5 * extra)
    with pytest.raises(ValueError, match="objective"):
        AblationLoss(
            losses.ContrastiveLoss(), SphericalFeatureTransform(), objective="both"
        )
    AblationLoss(
        losses.ContrastiveLoss(),
        SphericalFeatureTransform(),
        objective="separate",
        aug_weight=2.0,
    )
    with pytest.raises(ValueError, match="aug_weight"):
        AblationLoss(
            losses.ContrastiveLoss(), SphericalFeatureTransform(), aug_weight=2.0
        )


@pytest.mark.parametrize("option", ["reducer", "distance", "embedding_regularizer"])
def test_inner_loss_options_are_refused(option):
    value = {
        "reducer": reducers.SumReducer(),
        "distance": distances.LpDistance(),
        "embedding_regularizer": regularizers.LpRegularizer(),
    }[option]
    with pytest.raises(TypeError, match=option):
        SFTLoss(losses.ContrastiveLoss(), **{option: value})
    wrapped = SFTLoss(losses.ContrastiveLoss())
    assert not hasattr(wrapped, "reducer") and not hasattr(wrapped, "distance")


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="num_targetz"):
        SFTLoss(losses.ContrastiveLoss(), num_targetz=2)


def test_supported_losses_follow_pml_contract():
    from pml_sft.losses.feature_transform_loss import UNSUPPORTED_LOSSES

    supported = SFTLoss.supported_losses()
    assert "MultiSimilarityLoss" in supported and "ProxyAnchorLoss" in supported
    assert not set(supported) & set(UNSUPPORTED_LOSSES)
    for name in supported:
        SFTLoss.check_loss_support(name)
    for name in UNSUPPORTED_LOSSES:
        with pytest.raises(ValueError, match="cannot wrap " + name):
            SFTLoss.check_loss_support(name)


def test_cross_batch_memory_is_refused_both_ways():
    memory = losses.CrossBatchMemory(losses.ContrastiveLoss(), 8, memory_size=64)
    with pytest.raises(ValueError, match="memory bank"):
        SFTLoss(memory)
    with pytest.raises(Exception, match="not supported for SFTLoss"):
        losses.CrossBatchMemory(SFTLoss(losses.ContrastiveLoss()), 8)
    assert memory.queue_idx == 0


def _ema_sft(num_classes, size):
    return SphericalFeatureTransform(
        centers=MovingAverageClassCenters(num_classes, size)
    )


def test_state_dict_holds_iteration_and_centers():
    wrapped = FeatureTransformLoss(
        losses.ArcFaceLoss(4, 8), _ema_sft(4, 8), warmup_iterations=1
    )
    x, y = _batch()
    wrapped(x, y)
    wrapped(x, y)
    state = wrapped.state_dict()
    assert int(state["iteration"]) == 2
    assert "augmenter.centers.centers" in state and "loss.W" in state
    fresh = FeatureTransformLoss(
        losses.ArcFaceLoss(4, 8), _ema_sft(4, 8), warmup_iterations=1
    )
    fresh.load_state_dict(state)
    assert fresh.step_weight() == 1.0
    assert torch.equal(
        fresh.augmenter.centers.centers, wrapped.augmenter.centers.centers
    )


def test_wrappers_take_built_augmenters():
    wrapped = SFTLoss(losses.ContrastiveLoss(), num_targets=3, warmup_iterations=0)
    assert isinstance(wrapped.augmenter, SphericalFeatureTransform)
    assert wrapped.augmenter.num_targets == wrapped.num_targets == 3
    translation = FeatureTranslationLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    assert isinstance(translation.augmenter, FeatureTranslation)
    with pytest.raises(TypeError, match="build the augmenter"):
        SFTLoss(losses.ContrastiveLoss(), centers=MovingAverageClassCenters(4, 8))
    with pytest.raises(TypeError, match="augmenter must be"):
        FeatureTransformLoss(losses.ContrastiveLoss(), torch.nn.Identity())


class FallingThenFlat(torch.nn.Module):
    """A stand-in loss: 1/step for ``falling`` steps, then flat (plus noise of 1 %)."""

    def __init__(self, falling):
        super().__init__()
        self.falling, self.step = falling, 0

    def forward(self, embeddings, labels, indices_tuple=None):
        self.step += int(torch.is_grad_enabled())
        value = (
            1.0 / min(max(self.step, 1), self.falling) * (1 + 0.01 * (-1) ** self.step)
        )
        return embeddings.sum() * 0 + value


@pytest.mark.parametrize("wrapper", ["sft", "translation", "transform", "ablation"])
def test_without_a_schedule_augmentation_starts_once_the_loss_stops_falling(wrapper):
    from pml_sft.upstream.sft_loss import PLATEAU_WINDOW

    inner = losses.ContrastiveLoss()
    make = {
        "sft": lambda: SFTLoss(inner),
        "translation": lambda: FeatureTranslationLoss(inner),
        "transform": lambda: FeatureTransformLoss(inner, FeatureTranslation()),
        "ablation": lambda: AblationLoss(
            inner, FeatureTranslation(), objective="separate"
        ),
    }[wrapper]
    built = make()
    stand_in = FallingThenFlat(falling=450)  # 1/step: falls > 5 % per window
    built.loss = stand_in
    emb = torch.randn(16, 8, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(4)
    weights = []
    for step in range(1, 1001):
        with torch.no_grad():  # evaluation-style calls neither count nor observe
            built(emb, labels)
        built(emb, labels)
        weights.append(built.current_aug_weight)
    # the windows ending at 500 (mean over 401..500) still fell by > 5 %; the one
    # ending at 600 is flat: start after step 600, ramp over 300 steps
    assert built.warmup_iterations == 6 * PLATEAU_WINDOW
    assert built.ramp_iterations == 300
    assert max(weights[:600]) == 0 and weights[600] == pytest.approx(1 / 300)
    assert weights[899] == 1.0
    # the schedule found is in the state_dict: a resumed run keeps it
    resumed = make()
    resumed.load_state_dict(built.state_dict())
    resumed(emb, labels)
    assert resumed.warmup_iterations == 600 and resumed.current_aug_weight == 1.0


def test_plateau_start_keeps_a_given_ramp_and_a_given_warmup_wins():
    wrapped = SFTLoss(losses.ContrastiveLoss(), ramp_iterations=0)
    wrapped.loss = FallingThenFlat(falling=1)
    emb, labels = torch.randn(8, 4, requires_grad=True), torch.arange(8) % 2
    for _ in range(201):
        wrapped(emb, labels)
    assert (wrapped.warmup_iterations, wrapped.ramp_iterations) == (200, 0)
    assert wrapped.current_aug_weight == 1.0
    fixed = SFTLoss(losses.ContrastiveLoss(), warmup_iterations=3)
    assert (fixed.warmup_iterations, fixed.ramp_iterations) == (3, 0)
    by_length = SFTLoss(losses.ContrastiveLoss(), total_iterations=100)
    assert (by_length.warmup_iterations, by_length.ramp_iterations) == (50, 25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(warmup_iterations=-1), "warmup_iterations"),
        (dict(ramp_iterations=0.5), "ramp_iterations"),
        (dict(num_targets=0), "num_targets"),
        (dict(miner=miners.EmbeddingsAlreadyPackagedAsTriplets()), "batch layout"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTLoss(losses.ContrastiveLoss(), **kwargs)


@pytest.mark.parametrize("aug_weight", [1.5, -0.1])
def test_bad_ablation_weight(aug_weight):
    with pytest.raises(ValueError, match="aug_weight"):
        AblationLoss(
            losses.ContrastiveLoss(), SphericalFeatureTransform(), aug_weight=aug_weight
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


def test_do_nothing_reducer_needs_full_weight():
    x, y = _batch()
    inner = losses.ContrastiveLoss(reducer=reducers.DoNothingReducer())
    assert isinstance(SFTLoss(inner, warmup_iterations=0)(x, y), dict)
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
    )
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
