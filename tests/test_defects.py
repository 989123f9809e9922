"""The defects of the hostile review of 86bfd22 (the reliability issue), one test
each (NPairsLoss: tests/losses/test_sft_loss.py and the composability check;
DDP with ranks seeded apart: tests/test_distributed.py)."""

import math
import tracemalloc

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

import pml_sft
from pml_sft.contrib import (
    AblationLoss,
    AblationSphericalFeatureTransform,
    DatasetClassCenters,
)
from pml_sft.functional import rotate, slerp
from pml_sft.upstream import sft_loss

from .helpers import DEVICE, hardest_extra, random_unit


def _batch(n=24, d=8, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(DEVICE)
    y = torch.arange(classes).repeat_interleave(n // classes).to(DEVICE)
    return x, y


def _recording(inner):
    """The inner loss, remembering the (embeddings, labels, tuples, loss) of each
    call."""
    calls = []
    forward = inner.forward

    def record(embeddings, labels, indices_tuple=None, *args):
        out = forward(embeddings, labels, indices_tuple, *args)
        calls.append((embeddings, labels, indices_tuple, out))
        return out

    inner.forward = record
    return calls


# 2. the separate objective counts exactly the triplets with an augmented row
@pytest.mark.parametrize("role", ["any", "partner", "negative"])
def test_separate_objective_counts_the_triplets_with_augmented_rows(role):
    x, y = _batch()
    inner = losses.TripletMarginLoss(margin=0.5)
    calls = _recording(inner)
    sft = pml_sft.SphericalFeatureTransform(generator=torch.Generator().manual_seed(1))
    loss_fn = AblationLoss(
        inner, sft, objective="separate", synthetic_role=role, warmup_iterations=0
    )
    loss_fn(x, y)
    emb, labels, _, extra = calls[1]
    n = len(x)
    a, p, neg = lmu.get_all_triplets_indices(labels)
    keep = (a >= n) | (p >= n) | (neg >= n)
    if role != "any":
        keep &= a < n
    if role == "negative":
        keep &= p < n
    expected = losses.TripletMarginLoss(margin=0.5)(
        emb, labels, (a[keep], p[keep], neg[keep])
    )
    assert torch.allclose(extra, expected) and extra > 0


def test_separate_negative_objective_is_refused_for_pair_losses():
    sft = pml_sft.SphericalFeatureTransform()
    with pytest.raises(ValueError, match="would be zero"):
        AblationLoss(
            losses.NTXentLoss(),
            sft,
            objective="separate",
            synthetic_role="negative",
            warmup_iterations=0,
        )


# 3. options that act through indices_tuple are refused for losses without one
@pytest.mark.parametrize(
    "inner",
    [
        losses.PNPLoss(),
        losses.RankedListLoss(margin=0.4, Tn=0),
        losses.InstanceLoss(),
        losses.P2SGradLoss(8, 6),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_indices_tuple_options_are_refused_at_construction(inner):
    with pytest.raises(ValueError, match="takes no indices_tuple"):
        pml_sft.SFTLoss(inner, miner=miners.MultiSimilarityMiner(), warmup_iterations=0)
    sft = pml_sft.SphericalFeatureTransform()
    with pytest.raises(ValueError, match="synthetic_role='negative'"):
        AblationLoss(inner, sft, synthetic_role="negative", warmup_iterations=0)
    with pytest.raises(ValueError, match="objective='separate'"):
        AblationLoss(inner, sft, objective="separate", warmup_iterations=0)


# 4. resuming without a generator: the global RNG carries the draws
def _readme_setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8).to(DEVICE)
    loss_fn = pml_sft.SFTLoss(
        losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(), total_iterations=8
    ).to(DEVICE)
    return model, loss_fn, torch.optim.Adam(model.parameters(), lr=0.01)


def _steps(model, loss_fn, optimizer, steps):
    out = []
    for step in steps:
        x, y = _batch(seed=step)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        out.append(float(loss))
    return out


def test_resume_without_a_generator_with_the_rng_state():
    model, loss_fn, optimizer = _readme_setup()
    straight = _steps(model, loss_fn, optimizer, range(8))
    model, loss_fn, optimizer = _readme_setup()
    _steps(model, loss_fn, optimizer, range(4))
    checkpoint = dict(
        model=model.state_dict(),
        loss=loss_fn.state_dict(),
        optimizer=optimizer.state_dict(),
        rng=torch.get_rng_state(),  # what the docs say to save without a generator
    )
    if DEVICE.type == "cuda":  # the draws on CUDA come from the CUDA generator
        checkpoint["cuda_rng"] = torch.cuda.get_rng_state(DEVICE)
    model, loss_fn, optimizer = _readme_setup()
    model.load_state_dict(checkpoint["model"])
    loss_fn.load_state_dict(checkpoint["loss"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    if DEVICE.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["cuda_rng"], DEVICE)
    assert _steps(model, loss_fn, optimizer, range(4, 8)) == straight[4:]


def test_mismatched_generator_states_are_refused():
    with_gen = pml_sft.SphericalFeatureTransform(generator=torch.Generator())
    without = pml_sft.SphericalFeatureTransform()
    owner = "cannot load the random draws of SphericalFeatureTransform: "
    with pytest.raises(ValueError, match=owner + "the state was saved with a"):
        without.load_state_dict(with_gen.state_dict())
    with pytest.raises(ValueError, match=owner + "the state was saved without a"):
        with_gen.load_state_dict(without.state_dict())
    loss_with = pml_sft.SFTLoss(
        losses.ContrastiveLoss(), warmup_iterations=0, generator=torch.Generator()
    )
    loss_without = pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    with pytest.raises(ValueError, match="cannot load the random draws of SFTLoss"):
        loss_without.load_state_dict(loss_with.state_dict())


def test_a_state_with_another_schedule_is_refused():
    saved = pml_sft.SFTLoss(losses.ContrastiveLoss(), total_iterations=8)
    other = pml_sft.SFTLoss(losses.ContrastiveLoss(), total_iterations=12)
    with pytest.raises(ValueError, match=r"schedule \(warmup, ramp\) is \[4, 2\]"):
        other.load_state_dict(saved.state_dict())
    same = pml_sft.SFTLoss(
        losses.ContrastiveLoss(), warmup_iterations=4, ramp_iterations=2
    )
    same.load_state_dict(saved.state_dict())  # the same schedule, stated otherwise


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: pml_sft.SFTLoss(losses.ContrastiveLoss(), **kw),
        lambda **kw: AblationLoss(
            losses.ContrastiveLoss(), pml_sft.SphericalFeatureTransform(), **kw
        ),
    ],
    ids=["SFTLoss", "AblationLoss"],
)
def test_a_wrapper_without_a_schedule_is_refused(make):
    with pytest.raises(ValueError, match="total_iterations.*warmup_iterations"):
        make()
    assert make(warmup_iterations=0).warmup_iterations == 0


# 6. an outer triplet miner keeps its scale
def test_outer_triplet_miner_is_not_swamped():
    x, y = _batch(n=256, d=32, classes=64)
    outer = miners.TripletMarginMiner(margin=0.05, type_of_triplets="hard")(x, y)
    inner = losses.TripletMarginLoss()
    calls = _recording(inner)
    loss_fn = pml_sft.SFTLoss(inner, warmup_iterations=0)
    tracemalloc.start()
    loss_fn(x, y, outer)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    a, p, neg = calls[0][2]
    assert len(a) <= 2 * len(outer[0]) + 1  # was 13,125,779 for 281 mined at 86bfd22
    assert ((a >= 256) | (p >= 256) | (neg >= 256)).any()
    labels = calls[0][1]
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[neg]).all()
    assert (a != p).all()
    assert peak < 200 * 2**20


# 7. huge finite rows are rotated, not turned into NaN
def test_rotate_of_huge_rows_is_finite_and_exact():
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    c = -0.88  # 1 + <a, b> = 0.12
    b = torch.tensor([[c, math.sqrt(1 - c * c), 0.0, 0.0]])
    # along a + b, where <a + b, x> / (1 + <a, b>) = 4e38 overflows float32
    x = 1e38 * F.normalize(a + b, dim=1) + torch.tensor([[0.0, 0.0, 3e37, 1e37]])
    out = rotate(x, a, b)
    expected = rotate(x.double() / 1e30, a.double(), b.double()) * 1e30
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), expected, rtol=1e-5)


# 8. nearly antipodal centres: R src = dst
@pytest.mark.parametrize(
    "dtype,s,tolerance", [(torch.float32, 3e-4, 1e-6), (torch.float64, 1e-8, 1e-14)]
)
def test_nearly_antipodal_rotation_maps_src_to_dst(dtype, s, tolerance):
    a = random_unit(8, 16, torch.Generator().manual_seed(0))
    v = random_unit(8, 16, torch.Generator().manual_seed(1))
    v = F.normalize(v - (v * a).sum(1, keepdim=True) * a, dim=1)
    b = -math.sqrt(1 - s * s) * a + s * v
    a, b = a.to(DEVICE, dtype), b.to(DEVICE, dtype)
    assert (rotate(a, a, b) - b).norm(dim=1).max() < tolerance


# 9. the wrapper's statistics reach the log whatever the augmenter's setting
def test_statistics_of_a_wrapper_with_a_built_augmenter():
    x, y = _batch()
    built = pml_sft.FeatureTransformLoss(
        losses.ContrastiveLoss(),
        pml_sft.SphericalFeatureTransform(),
        warmup_iterations=0,
        collect_stats=True,
    )
    built(x, y)
    assert built.mean_center_angle > 0 and built.share_nearest_target > 0


# 10. tiny float32 rows (whose squares underflow): rotated like the same rows
# at scale 1, norms kept
@pytest.mark.parametrize("scale", [1e-30, 1e-22, 2e-22, 1e-20])
def test_tiny_rows_are_rotated_like_rows_of_norm_one(scale):
    x, y = _batch()

    def sft():
        return pml_sft.SphericalFeatureTransform(
            generator=torch.Generator().manual_seed(0)
        )

    reference, ref_labels, ref_src = sft()(x, y)
    aug, aug_labels, src = sft()(x * scale, y)
    assert torch.equal(aug_labels, ref_labels) and torch.equal(src, ref_src)
    assert torch.isfinite(aug).all() and len(aug) == len(x)
    assert torch.allclose(aug / scale, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="zero vector"):
        pml_sft.SphericalFeatureTransform()(torch.zeros_like(x), y)


# 11. slerp checks its inputs
def test_slerp_checks_its_inputs():
    a = random_unit(3, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        slerp(a, torch.full_like(a, float("nan")), 0.5)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        slerp(torch.ones(2, 1), -torch.ones(2, 1), 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        slerp(a.numpy(), a, 0.5)
    with pytest.raises(ValueError, match="shape"):
        slerp(a, a[:2], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slerp(a, a, 1.5)


# 12. settings that silently did nothing
def test_target_pool_all_needs_centres_with_memory():
    with pytest.raises(ValueError, match="target_pool='all' needs centres"):
        pml_sft.SphericalFeatureTransform(target_pool="all")


def test_never_fitted_dataset_centres_are_refused():
    x, y = _batch()
    centres = DatasetClassCenters(6, 8).to(DEVICE)
    sft = pml_sft.SphericalFeatureTransform(centers=centres)
    with pytest.raises(ValueError, match="call fit"):
        sft(x, y)


def test_calls_under_no_grad_or_in_eval_mode_do_not_advance_the_schedule():
    x, y = _batch()
    generator = torch.Generator().manual_seed(0)
    loss_fn = pml_sft.SFTLoss(
        losses.ContrastiveLoss(), total_iterations=8, generator=generator
    )  # warm-up 4, ramp 2
    plain = losses.ContrastiveLoss()(x, y)
    with torch.no_grad():
        for _ in range(5):
            loss_fn(x, y)
    assert int(loss_fn.iteration) == 0 and loss_fn.current_aug_weight == 0
    for _ in range(5):
        loss_fn(x, y)
    assert int(loss_fn.iteration) == 5 and loss_fn.current_aug_weight == 0.5
    # the plain loss, no draw, no step: neither under no_grad nor in eval mode
    draws = generator.get_state()
    with torch.no_grad():
        assert torch.equal(loss_fn(x, y), plain)
    assert int(loss_fn.iteration) == 5 and loss_fn.current_aug_weight == 0.0
    loss_fn.eval()
    assert torch.equal(loss_fn(x, y), plain)
    assert int(loss_fn.iteration) == 5 and loss_fn.current_aug_weight == 0.0
    assert torch.equal(generator.get_state(), draws)
    loss_fn.train()
    loss_fn(x, y)  # the next training step: past the ramp
    assert int(loss_fn.iteration) == 6 and loss_fn.current_aug_weight == 1.0
    assert not torch.equal(generator.get_state(), draws)


# 13. a caller's indices_tuple out of range
def test_out_of_range_indices_tuple_is_named():
    x, y = _batch()
    bad = (torch.tensor([0]), torch.tensor([1]), torch.tensor([len(x)]))
    loss_fn = pml_sft.SFTLoss(losses.TripletMarginLoss(), warmup_iterations=0)
    with pytest.raises(ValueError, match=r"indices_tuple\[2\] holds indices"):
        loss_fn(x, y, bad)


def test_ablation_augmenter_consistency_filter_without_statistics():
    x, y = _batch()
    sft = AblationSphericalFeatureTransform(consistent_only=True)
    aug, labels, _ = sft(x, y)
    assert len(aug) == len(labels) and len(aug) <= len(x)


# the tuple rule: an outer indices_tuple is kept and, without a miner, as many
# random tuples per synthetic row as it holds per real row are added, anchored
# at synthetic rows
def _tuple_rule_batch():
    # 6 real rows, then 4 synthetic ones (each with a positive among the rows)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 0, 1, 2, 3], device=DEVICE)
    return torch.randn(10, 4, device=DEVICE), labels, 6


def test_tuple_rule_adds_the_hardest_triplets_at_synthetic_rows():
    x, labels, n = _tuple_rule_batch()
    outer = tuple(
        t.repeat(4).to(DEVICE)
        for t in (
            torch.tensor([0, 2, 1]),
            torch.tensor([1, 3, 0]),
            torch.tensor([4, 5, 2]),
        )
    )  # 12 triplets on the 6 real rows: 2 per synthetic row where it has them
    rule = sft_loss.SFTLoss(losses.TripletMarginLoss(), warmup_iterations=0)
    a, p, neg = rule.create_indices_tuple(x, labels, outer, n)
    assert all(torch.equal(t[:12], o) for t, o in zip((a, p, neg), outer))
    a, p, neg = a[12:], p[12:], neg[12:]
    # round(12 * 4 / 6) = 8: two per synthetic row; rows 8 and 9 have a single
    # positive, which serves both of their triplets
    expected = hardest_extra(x, labels, n, 12, 12, triplets=True)
    assert (a.tolist(), p.tolist(), neg.tolist()) == expected
    assert len(a) == 8 and p[a == 8].tolist() == [4, 4]
    # nothing to add: no synthetic rows, or no outer tuples
    assert rule.create_indices_tuple(x[:n], labels[:n], outer, n) is outer
    assert rule.create_indices_tuple(x, labels, None, n) is None


def test_tuple_rule_adds_the_hardest_pairs_and_keeps_a_miner():
    x, labels, n = _tuple_rule_batch()
    outer = (
        torch.tensor([0, 2] * 3, device=DEVICE),
        torch.tensor([1, 3] * 3, device=DEVICE),
        torch.tensor([0, 4, 5] * 4, device=DEVICE),
        torch.tensor([2, 0, 1] * 4, device=DEVICE),
    )  # 6 positive (1 per row) and 12 negative pairs (2 per row)
    rule = pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    tuples = rule.create_indices_tuple(x, labels, outer, n)
    a1, p, a2, q = (t[len(o) :] for t, o in zip(tuples, outer))
    # round(6 * 4 / 6) = 4 positive pairs (one per row), 8 negative (two per row)
    expected = hardest_extra(x, labels, n, 6, 12, triplets=False)
    assert (a1.tolist(), p.tolist(), a2.tolist(), q.tolist()) == expected
    assert a1.tolist() == [6, 7, 8, 9] and a2.tolist() == [6, 6, 7, 7, 8, 8, 9, 9]
    # deterministic: the same batch gives the same tuples, whatever the RNG
    torch.manual_seed(123)
    again = rule.create_indices_tuple(x, labels, outer, n)
    assert all(torch.equal(s, t) for s, t in zip(tuples, again))
    # with a miner: its tuples on the whole batch, plus the outer ones
    miner = miners.PairMarginMiner(pos_margin=0, neg_margin=100)
    rule = sft_loss.SFTLoss(losses.ContrastiveLoss(), miner, warmup_iterations=0)
    mined = miner(x, labels)
    tuples = rule.create_indices_tuple(x, labels, outer, n)
    for t, m, o in zip(tuples, mined, outer):
        assert torch.equal(t, torch.cat([m, o]))


def test_proxy_centres_do_not_log_the_loss_twice():
    from pml_sft.contrib import ProxyClassCenters

    loss = losses.ProxyAnchorLoss(6, 8)
    wrapped = pml_sft.FeatureTransformLoss(
        loss,
        pml_sft.SphericalFeatureTransform(centers=ProxyClassCenters(loss)),
        warmup_iterations=0,
    )
    # record-keeper walks vars() of each object into attributes that are modules
    centres = wrapped.augmenter.centers
    walked = [k for k, v in vars(centres).items() if isinstance(v, torch.nn.Module)]
    assert walked == []
    x, y = _batch()
    assert torch.isfinite(wrapped(x, y))


def test_meta_labels_and_one_dimensional_features_are_refused():
    x, y = _batch()
    loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    with pytest.raises(ValueError, match="meta device"):
        loss_fn(x, y.to("meta"))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        loss_fn(x[:, :1], y)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        pml_sft.FeatureTranslation()(x[:, :1], y)
