import pytest
import torch

import pml_sft
from pml_sft import (
    BatchClassCenters,
    FeatureTranslation,
    MovingAverageClassCenters,
    SphericalFeatureTransform,
)
from pml_sft.contrib import AblationSphericalFeatureTransform

from .helpers import DEVICE, rotation_matrix, tol, unit


def _batch(dtype=torch.float64, per_class=4, classes=(3, 8, 11, 20), d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    centres = unit(torch.randn(len(classes), d, generator=g, dtype=torch.float64))
    x = centres.repeat_interleave(per_class, 0) + 0.3 * torch.randn(
        len(labels), d, generator=g, dtype=torch.float64
    )
    return x.to(dtype=dtype, device=DEVICE), labels.to(DEVICE)


def _class_means(x, labels):
    return {
        lab: unit(unit(x.double())[labels == lab].mean(0))
        for lab in labels.unique().tolist()
    }


def test_sft_rotates_each_sample_onto_its_target_class(dtype):
    # the raw (non-unit) row is rotated, so each new sample keeps its source's norm
    x, y = _batch(dtype)
    aug, aug_labels, src = SphericalFeatureTransform()(x, y)
    assert aug.dtype == dtype and aug_labels.dtype == y.dtype
    assert aug.shape == x.shape and torch.equal(
        src, torch.arange(len(x), device=DEVICE)
    )
    means = _class_means(x, y)
    for i in range(len(aug)):
        source_label, target_label = y[src[i]].item(), aug_labels[i].item()
        assert source_label != target_label
        r = rotation_matrix(means[source_label], means[target_label])
        expected = r @ x[src[i]].double()
        assert torch.allclose(aug[i].double(), expected, atol=tol(dtype) * 100)
    norms = aug.double().norm(dim=1)
    assert torch.allclose(norms, x[src].double().norm(dim=1), rtol=tol(dtype) * 10)
    assert (norms - 1).abs().max() > 0.05  # not unit rows


def test_sft_keeps_the_angle_to_the_class_center_translation_does_not():
    x, y = _batch(torch.float64, per_class=6)
    means = _class_means(x, y)
    for augmenter, keeps in (
        (SphericalFeatureTransform(), True),
        (FeatureTranslation(), False),
    ):
        aug, aug_labels, src = augmenter(x, y)
        before = torch.stack([unit(x[s]) @ means[y[s].item()] for s in src.tolist()])
        after = torch.stack(
            [unit(aug[i]) @ means[aug_labels[i].item()] for i in range(len(aug))]
        )
        assert torch.allclose(before, after, atol=1e-10) == keeps
        # both keep the source's norm
        assert torch.allclose(aug.norm(dim=1), x[src].norm(dim=1), atol=1e-12)


def test_translation_augmenter_matches_formula():
    # the direction u = x / |x| is translated: |x| normalize(u - c_i + c_j), and
    # without renormalising |x| (u - c_i + c_j)
    x, y = _batch(torch.float64)
    means = _class_means(x, y)
    for renormalize in (True, False):
        translation = FeatureTranslation(
            renormalize=renormalize, generator=torch.Generator().manual_seed(0)
        )
        aug, aug_labels, src = translation(x, y)
        assert len(aug) == len(x)
        for i in range(len(aug)):
            a, b = means[y[src[i]].item()], means[aug_labels[i].item()]
            moved = unit(x[src[i]]) - a + b
            if renormalize:
                moved = unit(moved)
            expected = x[src[i]].norm() * moved
            assert torch.allclose(aug[i], expected, atol=1e-10)
        ratio = aug.norm(dim=1) / x[src].norm(dim=1)
        if renormalize:
            assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-12)
        else:
            assert (ratio - 1).abs().max() > 0.05


def test_several_distinct_targets_per_sample():
    x, y = _batch(per_class=3)
    aug, aug_labels, src = SphericalFeatureTransform(num_targets=3)(x, y)
    assert len(aug) == 3 * len(x)
    for i in range(len(x)):
        targets = aug_labels[src == i].tolist()
        assert len(set(targets)) == 3 and y[i].item() not in targets
    # more targets than other classes: capped at the number of other classes
    aug, _, _ = SphericalFeatureTransform(num_targets=10)(x, y)
    assert len(aug) == 3 * len(x)


def test_single_class_batch_gives_nothing_and_records_it():
    x, y = _batch(classes=(5,), per_class=6)
    sft = SphericalFeatureTransform(collect_stats=True)
    aug, aug_labels, src = sft(x, y)
    assert aug.shape == (0, x.shape[1]) and len(aug_labels) == 0 and len(src) == 0
    assert sft.num_augmented == 0 and sft.num_unmoved_samples == 6


def test_singleton_classes_are_skipped_with_batch_centers_not_with_moving_average():
    x, y = _batch(per_class=1, classes=(0, 1, 2, 3))
    assert len(SphericalFeatureTransform()(x, y)[0]) == 0
    centres = MovingAverageClassCenters(4, x.shape[1]).to(DEVICE)
    sft = SphericalFeatureTransform(centers=centres)
    aug, aug_labels, src = sft(x, y)
    assert len(aug) == 4 and (aug_labels != y[src]).all()
    xs, ys = _batch(per_class=2, classes=(0, 1))
    xs = torch.cat([xs, x[:1]])
    ys = torch.cat([ys, torch.tensor([9], device=DEVICE)])
    aug, aug_labels, src = SphericalFeatureTransform()(xs, ys)
    assert 4 not in src.tolist() and 9 not in aug_labels.tolist()


def test_target_pool_all_reaches_classes_absent_from_the_batch():
    centres = MovingAverageClassCenters(30, 6).to(DEVICE)
    sft = SphericalFeatureTransform(centers=centres, target_pool="all", num_targets=3)
    x1, y1 = _batch(classes=(21, 22, 23, 24))
    sft(x1, y1)
    x2, y2 = _batch(classes=(3, 8, 11, 20), seed=1)
    _, aug_labels, _ = sft(x2, y2)
    assert set(aug_labels.tolist()) & {21, 22, 23, 24}
    _, batch_only, _ = SphericalFeatureTransform(centers=centres, num_targets=3)(x2, y2)
    assert set(batch_only.tolist()) <= {3, 8, 11, 20}


def test_generator_makes_draws_reproducible():
    x, y = _batch()
    outs = [
        SphericalFeatureTransform(
            generator=torch.Generator(device=DEVICE).manual_seed(4)
        )(x, y)
        for _ in range(2)
    ]
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@pytest.mark.parametrize("num_targets", [1, 2])
def test_keyed_draws_follow_the_rows_not_their_positions(num_targets):
    # reordering the batch reorders the new samples with it, bit for bit
    x, y = _batch()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    outs = []
    for order in (torch.arange(len(x)), perm):
        order = order.to(DEVICE)
        sft = SphericalFeatureTransform(
            num_targets=num_targets,
            keyed_draws=True,
            generator=torch.Generator().manual_seed(3),
        )
        aug, aug_labels, src = sft(x[order], y[order])
        key = order[src] * 100 + aug_labels  # (original source row, target class)
        rows = key.argsort()
        outs.append((key[rows], aug[rows]))
    assert len(outs[0][0]) == num_targets * len(x)
    assert torch.equal(outs[0][0], outs[1][0])  # the same targets for each row
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-12)


@pytest.mark.parametrize("keyed", [False, True])
def test_one_target_is_uniform_over_the_other_batch_classes(keyed):
    x, y = _batch(classes=(3, 8, 11, 20), per_class=4)
    sft = SphericalFeatureTransform(
        generator=torch.Generator(device=DEVICE).manual_seed(0), keyed_draws=keyed
    )
    counts = torch.zeros(4, 4)
    for i in range(300):
        xi = x + 1e-3 * i  # new content each call, for the keyed draws
        _, aug_y, src = sft(xi, y)
        rows = torch.bucketize(y[src].cpu(), torch.tensor([3, 8, 11, 20]))
        cols = torch.bucketize(aug_y.cpu(), torch.tensor([3, 8, 11, 20]))
        counts.index_put_((rows, cols), torch.ones(len(rows)), accumulate=True)
    assert counts.diagonal().sum() == 0  # never the sample's own class
    off = counts[~torch.eye(4, dtype=torch.bool)]
    # 1200 draws per source class over 3 others: 400 expected, sd ~16
    assert off.min() > 330 and off.max() < 470, counts


def test_gradients_reach_sources_unless_detached():
    x, y = _batch()
    x.requires_grad_()
    aug, _, _ = SphericalFeatureTransform()(x, y)
    aug.sum().backward()
    assert x.grad.abs().sum() > 0
    aug, _, _ = AblationSphericalFeatureTransform(detach_augmented=True)(x, y)
    assert not aug.requires_grad


def test_gradients_through_batch_centers_when_not_detached():
    x, y = _batch()
    x.requires_grad_()
    aug, _, src = AblationSphericalFeatureTransform(detach_centers=False)(x, y)
    detached, _, _ = SphericalFeatureTransform(
        generator=torch.Generator().manual_seed(0)
    )(x, y)
    # every target-class sample influences the output through its centre
    grad_rows = torch.autograd.grad(aug[0].sum(), x)[0].abs().sum(1) > 0
    assert grad_rows.sum() > 1
    with pytest.raises(ValueError, match="BatchClassCenters"):
        AblationSphericalFeatureTransform(
            centers=MovingAverageClassCenters(3, 4), detach_centers=False
        )


def test_norms_are_kept_unless_the_ablation_normalises():
    x, y = _batch()
    x = x * torch.linspace(0.5, 3, len(x), dtype=x.dtype, device=DEVICE).unsqueeze(1)

    def gen():
        return torch.Generator().manual_seed(0)

    core, core_labels, src = SphericalFeatureTransform(generator=gen())(x, y)
    assert torch.allclose(core.norm(dim=1), x[src].norm(dim=1))
    kept, kept_labels, kept_src = AblationSphericalFeatureTransform(
        normalize_embeddings=False, generator=gen()
    )(x, y)
    assert torch.equal(kept_labels, core_labels) and torch.equal(kept_src, src)
    assert torch.allclose(kept, core, atol=1e-12)
    # the study's setting (the default): the same samples as unit rows
    unit_rows, _, _ = AblationSphericalFeatureTransform(generator=gen())(x, y)
    ones = torch.ones(len(unit_rows), dtype=x.dtype, device=DEVICE)
    assert torch.allclose(unit_rows.norm(dim=1), ones)
    assert torch.allclose(unit_rows, unit(core), atol=1e-12)


class _RecordingCenters(BatchClassCenters):
    """BatchClassCenters remembering the dtype of the rows it was given and of the
    centres it returned."""

    def compute(self, embeddings, labels, include_absent=True):
        result = super().compute(embeddings, labels, include_absent)
        self.seen = (embeddings.dtype, result.centers.dtype)
        return result


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_augmentation(dtype):
    x, y = _batch()
    xh = x.to(dtype)
    centres = _RecordingCenters()
    aug, aug_labels, src = SphericalFeatureTransform(
        centers=centres, generator=torch.Generator().manual_seed(0)
    )(xh, y)
    assert aug.dtype == dtype and len(aug) == len(x)
    # centres (and the rotation) are computed in float32
    assert centres.seen == (torch.float32, torch.float32)
    means = _class_means(xh.double(), y)
    for i in range(len(aug)):
        r = rotation_matrix(means[y[src[i]].item()], means[aug_labels[i].item()])
        expected = r @ xh[src[i]].double()
        assert torch.allclose(aug[i].double(), expected, atol=5e-2)
    # exactly the float32 computation, rounded once at the end
    ref, ref_labels, ref_src = SphericalFeatureTransform(
        generator=torch.Generator().manual_seed(0)
    )(xh.float(), y)
    assert torch.equal(aug_labels, ref_labels) and torch.equal(src, ref_src)
    assert torch.equal(aug, ref.to(dtype))


def test_reference_embeddings_only_inform_centers():
    x, y = _batch(per_class=1)
    ref, ref_labels = _batch(per_class=3, seed=5)
    aug, aug_labels, src = SphericalFeatureTransform()(x, y, ref, ref_labels)
    assert len(aug) == len(x) and (aug_labels != y).all()


def test_stats_are_recorded():
    x, y = _batch()
    sft = SphericalFeatureTransform(collect_stats=True, num_targets=2)
    sft(x, y)
    assert sft.num_augmented == 2 * len(x)
    assert sft.num_target_classes == 4
    assert 0 < sft.mean_center_angle < 180
    assert {"num_augmented", "mean_center_angle"} <= set(sft._record_these_stats)


def test_num_target_classes_counts_the_classes_drawn_in_the_call():
    x, y = _batch(per_class=2, classes=tuple(range(12)))
    sft = SphericalFeatureTransform(
        collect_stats=True, generator=torch.Generator().manual_seed(0)
    )
    _, aug_labels, _ = sft(x, y)
    drawn = len(set(aug_labels.tolist()))
    assert sft.num_target_classes == drawn
    assert drawn < 12  # 24 draws over 12 classes miss some (this seed: checked)
    sft(x[:4], y[:4])  # two classes: each sample's target is the other one
    assert sft.num_target_classes == 2


@pytest.mark.parametrize(
    "mutate,err,match",
    [
        (lambda x, y: (x.clone().fill_(float("nan")), y), ValueError, "NaN or inf"),
        (
            lambda x, y: (torch.cat([x[:-1], torch.zeros_like(x[:1])]), y),
            ValueError,
            "zero vector",
        ),
        (lambda x, y: (x, y[:-1]), ValueError, "entries but there are"),
        (lambda x, y: (x, y.double()), TypeError, "integer"),
        (lambda x, y: (x, None), ValueError, "labels are required"),
        (lambda x, y: (x[None], y), ValueError, "shape"),
    ],
)
def test_bad_input(mutate, err, match):
    x, y = _batch()
    with pytest.raises(err, match=match):
        SphericalFeatureTransform()(*mutate(x, y))


def test_labels_are_moved_to_the_embeddings_device():
    # PML's convention (c_f.to_device): labels on the CPU with embeddings elsewhere
    # (TEST_DEVICE=cuda) are moved, not refused
    x, y = _batch()
    aug, aug_labels, src = SphericalFeatureTransform(
        generator=torch.Generator().manual_seed(0)
    )(x, y.cpu())
    assert aug_labels.device == x.device and aug.shape[0] == x.shape[0]
    expected = SphericalFeatureTransform(generator=torch.Generator().manual_seed(0))(
        x, y
    )
    assert torch.equal(aug, expected[0])


def test_bad_options():
    with pytest.raises(ValueError, match="nearest_targets"):
        AblationSphericalFeatureTransform(nearest_targets=0)
    with pytest.raises(ValueError, match="strength"):
        AblationSphericalFeatureTransform(strength=0)
    with pytest.raises(ValueError, match="detach_centers=False"):
        AblationSphericalFeatureTransform(
            centers=MovingAverageClassCenters(4, 8), detach_centers=False
        )
    with pytest.raises(ValueError, match="num_targets"):
        SphericalFeatureTransform(num_targets=0)
    with pytest.raises(ValueError, match="target_pool"):
        SphericalFeatureTransform(target_pool="everything")
    with pytest.raises(TypeError, match="centers"):
        SphericalFeatureTransform(centers="batch")
    with pytest.raises(TypeError, match="generator"):
        SphericalFeatureTransform(generator=0)
    assert isinstance(SphericalFeatureTransform().centers, BatchClassCenters)


def test_empty_batch():
    x = torch.zeros(0, 4, device=DEVICE)
    y = torch.zeros(0, dtype=torch.long, device=DEVICE)
    aug, aug_labels, src = SphericalFeatureTransform()(x, y)
    assert aug.shape == (0, 4) and len(aug_labels) == 0 and len(src) == 0


def _centers(x, y):
    sums = torch.zeros(int(y.max()) + 1, x.shape[1], dtype=x.dtype, device=x.device)
    return unit(sums.index_add(0, y, unit(x)))


def test_nearest_targets_are_the_nearest_other_classes():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8 * 3, 6, generator=g, dtype=torch.float64).to(DEVICE)
    y = torch.arange(8).repeat_interleave(3).to(DEVICE)
    centres = _centers(x, y)
    similarity = centres @ centres.T
    similarity.fill_diagonal_(-2)
    nearest = similarity.topk(2, dim=1).indices
    sft = AblationSphericalFeatureTransform(nearest_targets=2, num_targets=2)
    _, aug_labels, source = sft(x, y)
    assert len(aug_labels) == 2 * len(x)
    expected = nearest[y[source]]
    assert ((aug_labels.unsqueeze(1) == expected).any(dim=1)).all()
    # with one nearest class, every sample of a class goes to the same class
    _, aug_labels, source = AblationSphericalFeatureTransform(nearest_targets=1)(x, y)
    assert torch.equal(aug_labels, nearest[y[source], 0])


def test_strength_moves_part_of_the_way():
    x, y = _batch(dtype=torch.float64)
    full = SphericalFeatureTransform(generator=torch.Generator().manual_seed(0))
    half = AblationSphericalFeatureTransform(
        strength=0.5, generator=torch.Generator().manual_seed(0)
    )
    aug_full, labels_full, source = full(x, y)
    aug_half, labels_half, source_half = half(x, y)
    assert torch.equal(labels_full, labels_half) and torch.equal(source, source_half)
    centres = _centers(x, y)
    a, b = centres[y[source]], centres[labels_full]
    # the sample keeps its angle to the moved centre, which lies halfway
    angle_ab = torch.acos((a * b).sum(1).clamp(-1, 1))
    m = pml_sft.functional.slerp(a, b, 0.5)
    assert torch.allclose(torch.acos((a * m).sum(1).clamp(-1, 1)), angle_ab / 2)
    # the raw rows are rotated (norms kept); the ablation's default returns them
    # as unit rows
    expected = pml_sft.functional.rotate(x[source], a, m)
    assert torch.allclose(aug_half, unit(expected), atol=1e-10)
    assert torch.allclose(aug_full, pml_sft.functional.rotate(x[source], a, b))


def test_consistency_filter_and_its_statistic():
    x, y = _batch()
    logged = SphericalFeatureTransform(
        collect_stats=True, generator=torch.Generator().manual_seed(0)
    )
    aug, aug_labels, _ = logged(x, y)
    centres = _centers(x, y)
    nearest = (aug @ centres.T).argmax(dim=1) == aug_labels
    assert logged.share_nearest_target == pytest.approx(nearest.float().mean().item())
    filtered = AblationSphericalFeatureTransform(
        consistent_only=True,
        normalize_embeddings=False,  # the filter alone
        generator=torch.Generator().manual_seed(0),
    )
    aug_f, labels_f, _ = filtered(x, y)
    assert torch.equal(aug_f, aug[nearest]) and torch.equal(
        labels_f, aug_labels[nearest]
    )


def test_gradients_through_batch_centers():
    x, y = _batch(dtype=torch.float64)
    x.requires_grad_(True)
    sft = AblationSphericalFeatureTransform(
        detach_centers=False, generator=torch.Generator().manual_seed(0)
    )

    def f(x):
        sft.generator.manual_seed(0)
        return sft(x, y)[0]

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("consistent_only", [False, True])
def test_no_centres_with_statistics_and_the_filter(consistent_only):
    # every class has one sample: no batch centre, nothing to move, no error
    x = torch.randn(4, 6, device=DEVICE)
    y = torch.arange(4, device=DEVICE)
    sft = AblationSphericalFeatureTransform(
        collect_stats=True, consistent_only=consistent_only
    )
    aug, aug_labels, source = sft(x, y)
    assert aug.shape == (0, 6) and len(aug_labels) == 0 and len(source) == 0
    assert sft.num_augmented == 0 and sft.share_nearest_target == 0.0
