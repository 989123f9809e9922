import pytest
import torch
from pytorch_metric_learning import losses, miners, reducers

from pml_sft import (
    FeatureTransformLoss,
    FeatureTranslation,
    FeatureTranslationLoss,
    MovingAverageClassCenters,
    SFTLoss,
    SphericalFeatureTransform,
)

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
    wrapped = SFTLoss(inner, generator=_gen())
    aug, aug_labels, _ = SphericalFeatureTransform(generator=_gen())(x, y)
    expected = inner(torch.cat([x, aug]), torch.cat([y, aug_labels]))
    assert torch.allclose(wrapped(x, y), expected)
    assert wrapped.num_augmented == len(x)


def test_single_class_batch_returns_plain_loss():
    x, y = _batch(classes=1, per_class=6)
    inner = losses.ContrastiveLoss()
    wrapped = SFTLoss(inner, collect_stats=True)
    assert torch.equal(wrapped(x, y), inner(x, y))
    assert wrapped.num_augmented == 0 and wrapped.transform.num_augmented == 0


def test_warmup_ramp_and_weight():
    x, y = _batch()
    inner = losses.MultiSimilarityLoss()
    plain = inner(x, y)
    aug, aug_labels, _ = SphericalFeatureTransform(generator=_gen())(x, y)
    full = inner(torch.cat([x, aug]), torch.cat([y, aug_labels]))
    wrapped = SFTLoss(inner, warmup_iterations=2, ramp_iterations=4, aug_weight=0.8)
    assert torch.equal(wrapped(x, y), plain) and torch.equal(wrapped(x, y), plain)
    wrapped.transform.generator = _gen()
    w = 0.8 * 1 / 4
    assert wrapped.current_weight() == 0.0
    got = wrapped(x, y)
    assert wrapped.current_aug_weight == pytest.approx(w)
    assert torch.allclose(got, (1 - w) * plain + w * full)
    for _ in range(10):
        wrapped(x, y)
    assert wrapped.current_weight() == pytest.approx(0.8)


def test_eval_mode_does_not_augment_or_count():
    x, y = _batch()
    inner = losses.TripletMarginLoss()
    wrapped = SFTLoss(inner).eval()
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
    wrapped = SFTLoss(Recording(), miner=miners.MultiSimilarityMiner(epsilon=10))
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
    SFTLoss(Recording())(x, y, outer)
    a, p, n = seen["indices"]
    k = len(outer[0])
    assert torch.equal(a[:k], outer[0])
    extra = torch.stack([a[k:], p[k:], n[k:]])
    assert ((extra >= len(x)).any(dim=0)).all() and extra.shape[1] > 0


def test_augmented_rows_only_as_partners():
    x, y = _batch()
    seen = {}

    class Recording(losses.ContrastiveLoss):
        def forward(self, embeddings, labels, indices_tuple=None, *args):
            seen["indices"] = indices_tuple
            return super().forward(embeddings, labels, indices_tuple, *args)

    SFTLoss(Recording(), augmented_anchors=False)(x, y)
    a1, p, a2, n = seen["indices"]
    assert (a1 < len(x)).all() and (a2 < len(x)).all()
    assert (p >= len(x)).any() and (n >= len(x)).any()
    SFTLoss(
        Recording(),
        augmented_anchors=False,
        miner=miners.MultiSimilarityMiner(epsilon=10),
    )(x, y)
    a1, p, a2, n = seen["indices"]
    assert (a1 < len(x)).all() and (a2 < len(x)).all() and (p >= len(x)).any()


def test_state_dict_holds_iteration_and_centres():
    wrapped = SFTLoss(
        losses.ArcFaceLoss(4, 8),
        centers=MovingAverageClassCenters(4, 8),
        warmup_iterations=1,
    )
    x, y = _batch()
    wrapped(x, y)
    wrapped(x, y)
    state = wrapped.state_dict()
    assert int(state["iteration"]) == 2
    assert "transform.centers.centers" in state and "loss.W" in state
    fresh = SFTLoss(
        losses.ArcFaceLoss(4, 8),
        centers=MovingAverageClassCenters(4, 8),
        warmup_iterations=1,
    )
    fresh.load_state_dict(state)
    assert fresh.current_weight() == 1.0
    assert torch.equal(
        fresh.transform.centers.centers, wrapped.transform.centers.centers
    )


def test_kwargs_are_routed_to_transform_and_wrapper():
    wrapped = SFTLoss(
        losses.ContrastiveLoss(), num_targets=3, target_pool="batch", aug_weight=0.5
    )
    assert wrapped.transform.num_targets == 3 and wrapped.aug_weight == 0.5
    assert isinstance(
        FeatureTranslationLoss(losses.ContrastiveLoss()).transform, FeatureTranslation
    )
    assert isinstance(
        FeatureTransformLoss(losses.ContrastiveLoss()).transform,
        SphericalFeatureTransform,
    )
    with pytest.raises(TypeError, match="builds its own transform"):
        SFTLoss(losses.ContrastiveLoss(), transform=FeatureTranslation())
    with pytest.raises(TypeError, match="belong to the transform"):
        FeatureTransformLoss(
            losses.ContrastiveLoss(), transform=FeatureTranslation(), num_targets=2
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(aug_weight=1.5), "aug_weight"),
        (dict(aug_weight=-0.1), "aug_weight"),
        (dict(warmup_iterations=-1), "warmup_iterations"),
        (dict(ramp_iterations=0.5), "ramp_iterations"),
        (dict(miner=miners.EmbeddingsAlreadyPackagedAsTriplets()), "batch layout"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTLoss(losses.ContrastiveLoss(), **kwargs)
    with pytest.raises(TypeError, match="transform must be"):
        FeatureTransformLoss(losses.ContrastiveLoss(), transform=torch.nn.Identity())


def test_bad_input_is_refused_before_the_inner_loss():
    x, y = _batch()
    wrapped = SFTLoss(losses.ContrastiveLoss())
    with pytest.raises(ValueError, match="labels are required"):
        wrapped(x, None)
    with pytest.raises(ValueError, match="NaN or inf"):
        wrapped(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="zero vector"):
        wrapped(torch.zeros_like(x), y)


def test_do_nothing_reducer_needs_full_weight():
    x, y = _batch()
    inner = losses.ContrastiveLoss(reducer=reducers.DoNothingReducer())
    assert isinstance(SFTLoss(inner)(x, y), dict)
    with pytest.raises(TypeError, match="reducer that returns a tensor"):
        SFTLoss(inner, aug_weight=0.5)(x, y)


def test_moving_average_centres_across_batches_and_translation():
    g = _gen(3)
    wrapped = FeatureTranslationLoss(
        losses.MultiSimilarityLoss(),
        centers=MovingAverageClassCenters(10, 8),
        target_pool="all",
        generator=g,
    )
    for seed in range(3):
        x, y = _batch(classes=2, per_class=2, seed=seed)
        loss = wrapped(x, y + 2 * seed)
        assert torch.isfinite(loss)
    assert int((wrapped.transform.centers.num_updates > 0).sum()) == 6
