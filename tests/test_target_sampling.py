"""The target draw (pml_sft.utils.target_sampling), tested directly."""

import pytest
import torch

from pml_sft.utils.target_sampling import (
    draw_seed,
    draw_targets,
    generator_state,
    keyed_scores,
    load_generator_state,
    random_scores,
    row_keys,
    target_scores,
)

from .helpers import DEVICE


def _allowed(num_sources=6, num_rows=5, seed=0):
    """Random masks with the source's own row (row s % K) excluded."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(num_sources, num_rows, generator=g) < 0.7
    own = torch.arange(num_sources) % num_rows
    allowed[torch.arange(num_sources), own] = False
    return allowed.to(DEVICE), own.to(DEVICE)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_targets_are_allowed_distinct_and_as_many_as_possible(k):
    allowed, own = _allowed(40, 7)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    positions, targets = draw_targets(allowed, k, random_scores((40, 7), DEVICE, g))
    assert allowed[positions, targets].all()  # never a disallowed row
    assert (targets != own[positions]).all()  # never the source's own class
    for s in range(40):
        chosen = targets[positions == s].tolist()
        assert len(chosen) == len(set(chosen))  # distinct
        assert len(chosen) == min(k, int(allowed[s].sum()))  # as many as allowed
    assert torch.equal(positions, positions.sort().values)  # source by source


@pytest.mark.parametrize("k", [1, 2])
def test_draws_are_uniform_over_the_allowed_rows(k):
    # one source, rows 1, 2, 4 allowed out of 6: each must be chosen with
    # probability k / 3; with 30000 draws the counts lie within 5 sigma
    allowed = torch.zeros(30000, 6, dtype=torch.bool, device=DEVICE)
    allowed[:, [1, 2, 4]] = True
    g = torch.Generator(device=DEVICE).manual_seed(0)
    _, targets = draw_targets(allowed, k, random_scores((30000, 6), DEVICE, g))
    counts = torch.bincount(targets, minlength=6).double()
    assert counts[[0, 3, 5]].sum() == 0
    expected = 30000 * k / 3
    sigma = (30000 * (k / 3) * (1 - k / 3)) ** 0.5
    assert ((counts[[1, 2, 4]] - expected).abs() < 5 * sigma).all()


def test_pairs_of_targets_are_uniform_subsets():
    allowed = torch.ones(30000, 4, dtype=torch.bool, device=DEVICE)
    allowed[:, 0] = False
    g = torch.Generator(device=DEVICE).manual_seed(3)
    positions, targets = draw_targets(allowed, 2, random_scores((30000, 4), DEVICE, g))
    pairs = targets.view(-1, 2).sort(dim=1).values
    codes = pairs[:, 0] * 4 + pairs[:, 1]
    counts = torch.bincount(codes, minlength=16)[
        [6, 7, 11]
    ].double()  # {1,2},{1,3},{2,3}
    assert ((counts - 10000).abs() < 5 * (30000 * (1 / 3) * (2 / 3)) ** 0.5).all()


def test_empty_inputs():
    empty = torch.zeros(0, 3, dtype=torch.bool, device=DEVICE)
    positions, targets = draw_targets(empty, 1, torch.rand(0, 3, device=DEVICE))
    assert positions.numel() == 0 and targets.numel() == 0
    none_allowed = torch.zeros(4, 3, dtype=torch.bool, device=DEVICE)
    positions, _ = draw_targets(none_allowed, 2, torch.rand(4, 3, device=DEVICE))
    assert positions.numel() == 0


def test_generator_reproduces_scores():
    a = random_scores((5, 4), DEVICE, torch.Generator(device=DEVICE).manual_seed(7))
    b = random_scores((5, 4), DEVICE, torch.Generator(device=DEVICE).manual_seed(7))
    c = random_scores((5, 4), DEVICE, torch.Generator(device=DEVICE).manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all()


def test_keyed_scores_follow_the_rows_not_their_positions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g).to(DEVICE)
    labels = torch.tensor([3, 8, 11], device=DEVICE)
    keys = row_keys(x)
    assert len(set(keys.tolist())) == 10  # distinct rows, distinct keys
    perm = torch.randperm(10, generator=g).to(DEVICE)
    assert torch.equal(row_keys(x[perm]), keys[perm])
    scores = keyed_scores(keys, labels, seed=5)
    assert torch.equal(keyed_scores(keys[perm], labels, seed=5), scores[perm])
    assert not torch.equal(keyed_scores(keys, labels, seed=6), scores)
    assert ((scores >= 0) & (scores < 1)).all()


def test_negative_scores_rule_targets_out():
    allowed = torch.ones(50, 4, dtype=torch.bool, device=DEVICE)
    scores = random_scores((50, 4), DEVICE, torch.Generator().manual_seed(0))
    scores[:, 1] = -1.0  # as restrict_scores marks a target it rules out
    positions, targets = draw_targets(allowed, 3, scores)
    assert (targets != 1).all() and len(targets) == 50 * 3
    assert torch.equal(positions, torch.arange(50, device=DEVICE).repeat_interleave(3))


def test_target_scores_plain_and_keyed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g).to(DEVICE)
    labels = torch.tensor([3, 8, 11], device=DEVICE)

    def gen():
        return torch.Generator().manual_seed(4)

    # plain: one (N, K) draw from the generator
    plain = target_scores(x, labels, False, gen())
    assert plain.shape == (10, 3)
    assert torch.equal(plain, random_scores((10, 3), DEVICE, gen()))
    # keyed: the rows' keys and one seed drawn per call
    keyed = target_scores(x, labels, True, gen())
    assert torch.equal(keyed, keyed_scores(row_keys(x), labels, draw_seed(gen())))
    perm = torch.randperm(10, generator=g).to(DEVICE)
    assert torch.equal(target_scores(x[perm], labels, True, gen()), keyed[perm])


def test_generator_states_load_only_alike():
    g = torch.Generator().manual_seed(5)
    state = generator_state(g)
    expected = torch.rand(3, generator=g)
    load_generator_state(g, state, "Owner")
    assert torch.equal(torch.rand(3, generator=g), expected)
    load_generator_state(None, generator_state(None), "Owner")
    with pytest.raises(ValueError, match="^cannot load the random draws of Owner: "):
        load_generator_state(None, state, "Owner")
    with pytest.raises(ValueError, match="^cannot load the random draws of Owner: "):
        load_generator_state(g, generator_state(None), "Owner")
