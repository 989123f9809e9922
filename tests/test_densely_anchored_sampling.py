"""Densely Anchored Sampling: its counts and memory against a sequential reference
written out in float64, its copies against the formula, its state, edge cases, bad
input, and that it changes the losses it is meant for."""

import copy
import itertools

import pytest
import torch
from pytorch_metric_learning import losses

import pml_sft
from pml_sft import DenselyAnchoredSampling, DenselyAnchoredSamplingLoss

from .helpers import DEVICE
from .test_family import PAIR_LOSSES, augmentation_changes


def batch(seed=0, n=12, d=6, classes=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.arange(n) % classes
    return x.to(DEVICE), y.to(DEVICE)


class Reference:
    """DAS's state kept the slow way: per-class lists and Python loops."""

    def __init__(self, num_classes, d, num_scaled_dims, bank_size):
        self.counts = [[0] * d for _ in range(num_classes)]
        self.ring = [[None] * bank_size for _ in range(num_classes)]
        self.next = [0] * num_classes
        self.filled = [0] * num_classes
        self.s, self.bank_size = num_scaled_dims, bank_size

    def remember(self, x, y):
        unit = [row / row.norm() for row in x]
        for u, c in zip(unit, y.tolist()):
            for dim in sorted(range(len(u)), key=lambda i: -float(u[i]))[: self.s]:
                self.counts[c][dim] += 1
        for a, b in itertools.permutations(range(len(y)), 2):  # a-major
            c = int(y[a])
            if c == int(y[b]):
                self.ring[c][self.next[c]] = unit[a] - unit[b]
                self.next[c] = (self.next[c] + 1) % self.bank_size
                self.filled[c] = min(self.filled[c] + 1, self.bank_size)

    def scaled_dims(self, c):
        d = len(self.counts[c])
        return sorted(range(d), key=lambda i: (-self.counts[c][i], i))[: self.s]

    def candidates(self, x_row, c, factor, shift_scale):
        """Every copy the formula allows: one per remembered difference."""
        u = x_row / x_row.norm()
        scaled = u.clone()
        for dim in self.scaled_dims(c):
            scaled[dim] = scaled[dim] * factor
        shifts = [t for t in self.ring[c][: self.filled[c]]] or [torch.zeros_like(u)]
        return [
            (scaled + shift_scale * t) / (scaled + shift_scale * t).norm()
            for t in shifts
        ]


def test_memory_and_copies_match_a_sequential_reference():
    # a fixed factor (low == high) makes each copy one of a known few
    das = DenselyAnchoredSampling(
        4,
        6,
        num_produce=2,
        num_scaled_dims=2,
        scale_range=(1.5, 1.5),
        bank_size=5,
        shift_scale=0.3,
    ).to(DEVICE)
    ref = Reference(4, 6, 2, 5)
    batches = [batch(0, n=9, classes=3), batch(1, n=8, classes=4), batch(2, n=6)]
    used_slots = set()
    for x, y in batches:
        ref.remember(x.cpu(), y.cpu())
        aug, aug_labels, sources = das(x, y)
        assert das.dim_counts.tolist() == ref.counts
        assert das.bank_next.tolist() == ref.next
        assert das.bank_filled.tolist() == ref.filled
        for c in range(4):
            for slot in range(ref.filled[c]):
                assert torch.allclose(
                    das.bank[c, slot].double().cpu(), ref.ring[c][slot], atol=1e-6
                )
        n = len(y)
        assert aug.shape == (2 * n, 6) and aug.dtype == x.dtype
        assert sources.tolist() == list(range(n)) * 2  # copy-major
        assert torch.equal(aug_labels, y[sources])
        for row, i in enumerate(sources.tolist()):
            c = int(y[i])
            options = ref.candidates(x[i].cpu(), c, 1.5, 0.3)
            match = [
                j
                for j, o in enumerate(options)
                if torch.allclose(aug[row].cpu(), o, atol=1e-6)
            ]
            assert match, (row, i)
            used_slots.add((c, match[0]))
    assert len(used_slots) > 4  # the draws reach more than one slot per class


def test_factors_lie_in_their_range_on_the_classs_top_dimensions():
    torch.manual_seed(0)
    das = DenselyAnchoredSampling(
        2,
        8,
        num_produce=50,
        num_scaled_dims=3,
        scale_range=(0.5, 2.0),
        shift_scale=0,
    )
    x = torch.nn.functional.normalize(
        torch.rand(2, 8, dtype=torch.float64) + 0.1, dim=1
    )
    y = torch.tensor([0, 1])
    aug, _, sources = das(x, y)
    top = {i: set(x[i].topk(3).indices.tolist()) for i in (0, 1)}
    factors = []
    for row, i in enumerate(sources.tolist()):
        raw = aug[row]
        unscaled = [d for d in range(8) if d not in top[i]]
        scale = raw[unscaled[0]] / x[i, unscaled[0]]  # normalisation's factor
        expected = x[i] * scale
        assert torch.allclose(raw[unscaled], expected[unscaled], atol=1e-12)
        for d in top[i]:
            factors.append(float(raw[d] / expected[d]))
    assert 0.5 <= min(factors) < 0.7 and 1.8 < max(factors) <= 2.0


def test_copies_are_detached_unit_and_keep_the_input_dtype():
    x, y = batch(3)
    x.requires_grad_()
    aug, _, _ = DenselyAnchoredSampling(3, 6).to(DEVICE)(x, y)
    assert not aug.requires_grad
    assert torch.allclose(
        aug.norm(dim=1), torch.ones(len(aug), dtype=aug.dtype, device=aug.device)
    )
    half = DenselyAnchoredSampling(3, 6).to(DEVICE)(x.detach().half(), y)[0]
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.allclose(
        half.float().norm(dim=1), torch.ones(len(half), device=DEVICE), atol=1e-3
    )


def test_eval_mode_reads_the_memory_without_updating_it():
    das = DenselyAnchoredSampling(3, 6).to(DEVICE)
    das(*batch(0))
    state = copy.deepcopy(das.state_dict())
    das.eval()
    aug, _, _ = das(*batch(1))
    assert len(aug) == 3 * 12
    for key, value in das.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_state_dict_resumes_the_same_copies():
    first = DenselyAnchoredSampling(3, 6, scale_range=(0.5, 2.0)).to(DEVICE)
    first(*batch(0))
    second = DenselyAnchoredSampling(3, 6, scale_range=(0.5, 2.0)).to(DEVICE)
    second.load_state_dict(first.state_dict())
    x, y = batch(1)
    torch.manual_seed(5)
    a = first(x, y)[0]
    torch.manual_seed(5)
    b = second(x, y)[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        DenselyAnchoredSampling(4, 6).load_state_dict(first.state_dict())


def test_edge_cases():
    das = DenselyAnchoredSampling(5, 4).to(DEVICE)
    # an empty batch
    aug, labels, sources = das(torch.randn(0, 4, device=DEVICE), torch.zeros(0).long())
    assert aug.shape == (0, 4) and len(labels) == len(sources) == 0
    # one-sample classes: nothing to remember, copies only scaled
    x = torch.randn(5, 4, device=DEVICE, dtype=torch.float64)
    aug, _, _ = das(x, torch.arange(5))
    assert das.bank_filled.sum() == 0 and torch.isfinite(aug).all()
    # identical members: a zero difference is remembered, and shifts by nothing
    a = torch.randn(1, 4, device=DEVICE, dtype=torch.float64)
    das = DenselyAnchoredSampling(1, 4, num_scaled_dims=0).to(DEVICE)
    aug, _, _ = das(torch.cat([a, a]), torch.tensor([0, 0]))
    assert das.bank_filled.tolist() == [2]
    expected = torch.nn.functional.normalize(a, dim=1).expand_as(aug)
    assert torch.allclose(aug, expected, atol=1e-12)
    # opposite members: the largest shift allowed still leaves a direction
    das = DenselyAnchoredSampling(1, 4, shift_scale=0.49).to(DEVICE)
    aug, _, _ = das(torch.cat([a, -a]), torch.tensor([0, 0]))
    assert torch.isfinite(aug).all()
    # more same-class pairs than slots: the last bank_size stay, in order
    das = DenselyAnchoredSampling(1, 4, bank_size=3).to(DEVICE)
    x = torch.randn(3, 4, device=DEVICE, dtype=torch.float64)
    das(x, torch.zeros(3).long())
    u = torch.nn.functional.normalize(x, dim=1)
    pairs = list(itertools.permutations(range(3), 2))[-3:]  # 6 pairs, ring of 3
    ring = {(3 + k) % 3: u[a] - u[b] for k, (a, b) in enumerate(pairs)}
    for slot, diff in ring.items():
        assert torch.allclose(das.bank[0, slot].double(), diff, atol=1e-6)
    assert das.bank_next.tolist() == [0] and das.bank_filled.tolist() == [3]


def test_bad_input_gets_a_clear_error():
    for kwargs, message in [
        (dict(num_produce=0), "num_produce"),
        (dict(bank_size=1.5), "bank_size"),
        (dict(num_scaled_dims=-1), "num_scaled_dims"),
        (dict(scale_range=(0, 1)), "scale_range"),
        (dict(scale_range=(2, 1)), "scale_range"),
        (dict(scale_range=3), "scale_range"),
        (dict(shift_scale=0.5), "shift_scale"),
        (dict(shift_scale=0.2, scale_range=(0.4, 1)), "shift_scale"),
    ]:
        with pytest.raises(ValueError, match=message):
            DenselyAnchoredSampling(3, 6, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        DenselyAnchoredSampling(0, 6)
    das = DenselyAnchoredSampling(3, 6)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        das(torch.randn(2, 6), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="embedding_size=6"):
        das(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN|inf|finite"):
        das(torch.tensor([[float("nan")] * 6, [1.0] * 6]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="zero vector"):
        das(torch.zeros(2, 6), torch.tensor([0, 1]))
    assert das.dim_counts.sum() == 0  # refused calls leave the memory alone
    elsewhere = DenselyAnchoredSampling(3, 6).to("meta")
    with pytest.raises(ValueError, match=r"state is on meta.*\.to\('cpu'\)"):
        elsewhere(torch.randn(2, 6), torch.tensor([0, 1]))


@pytest.mark.parametrize("loss", list(PAIR_LOSSES))
def test_das_changes_the_losses_it_is_compared_on(loss):
    inner, miner = PAIR_LOSSES[loss]()
    x, y = batch(5, n=16, d=8, classes=4, dtype=torch.float32)
    wrapped = DenselyAnchoredSamplingLoss(
        inner, 4, 8, miner, warmup_iterations=0, collect_stats=True
    ).to(DEVICE)
    assert augmentation_changes(wrapped, x, y)
    assert wrapped.num_augmented == 3 * 16


def test_das_is_exported_and_follows_the_schedule():
    for name in ("DenselyAnchoredSampling", "DenselyAnchoredSamplingLoss"):
        assert name in pml_sft.__all__ and hasattr(pml_sft, name)
    # total_iterations=8: warm-up 4, then the weight ramps up over 2
    wrapped = DenselyAnchoredSamplingLoss(
        losses.ContrastiveLoss(), 3, 6, total_iterations=8
    ).to(DEVICE)
    x, y = batch(0, dtype=torch.float32)
    seen, weights = [], []
    for _ in range(8):
        wrapped(x.clone().requires_grad_(), y)
        seen.append(wrapped.num_augmented)
        weights.append(wrapped.current_aug_weight)
    assert weights == [0.0] * 4 + [0.5] + [1.0] * 3
    assert seen[:4] == [0] * 4 and min(seen[4:]) == 36
    assert int(wrapped.augmenter.dim_counts.sum()) > 0


def test_das_loss_needs_a_schedule():
    with pytest.raises(ValueError, match="total_iterations.*warmup_iterations"):
        DenselyAnchoredSamplingLoss(losses.ContrastiveLoss(), 3, 6)
    wrapped = DenselyAnchoredSamplingLoss(
        losses.ContrastiveLoss(), 3, 6, warmup_iterations=0
    )
    assert wrapped.warmup_iterations == 0 and wrapped.ramp_iterations == 0


def test_a_refused_loss_inside_multiple_losses_is_refused():
    # DAS's detached copies only rescale a per-row loss's gradient: refused
    # whether the loss comes alone or inside MultipleLosses
    for inner in (
        losses.NormalizedSoftmaxLoss(3, 6),
        losses.MultipleLosses([losses.NormalizedSoftmaxLoss(3, 6)]),
        losses.MultipleLosses(
            {"a": losses.ContrastiveLoss(), "b": losses.ArcFaceLoss(3, 6)}
        ),
    ):
        with pytest.raises(ValueError, match="cannot change the training signal of"):
            DenselyAnchoredSamplingLoss(inner, 3, 6, warmup_iterations=0)


def test_options_that_would_copy_the_anchors_unchanged_are_refused():
    for options in (
        dict(num_scaled_dims=0, shift_scale=0),
        dict(scale_range=(1, 1), shift_scale=0.0),
    ):
        with pytest.raises(ValueError, match="every copy would equal its anchor"):
            DenselyAnchoredSampling(3, 6, **options)
    with pytest.raises(ValueError, match="shift_scale must be in"):
        DenselyAnchoredSampling(3, 6, shift_scale=False)
    DenselyAnchoredSampling(3, 6, num_scaled_dims=0)  # the shift alone still moves


def test_a_proxy_loss_of_another_size_is_refused_at_construction():
    with pytest.raises(ValueError, match="does not fit ProxyAnchorLoss"):
        DenselyAnchoredSamplingLoss(
            losses.ProxyAnchorLoss(3, 8), 3, 6, warmup_iterations=0
        )
    DenselyAnchoredSamplingLoss(losses.ProxyAnchorLoss(3, 6), 3, 6, warmup_iterations=0)
