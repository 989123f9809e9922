"""Vectorised choice of target classes for feature transforms."""

import torch


def random_scores(shape, device, generator=None):
    """Uniform random numbers on ``device``, drawn from ``generator`` when given
    (on the generator's own device, then moved)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def sample_target_rows(source_rows, candidate_mask, num_targets, generator=None):
    """For each source, pick up to ``num_targets`` distinct candidate rows other than
    its own, uniformly at random.

    Args:
        source_rows: (S,) row of each source's own class centre (>= 0).
        candidate_mask: (K,) which centre rows may be targets.
        num_targets: targets per source.
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        (source_positions (M,), target_rows (M,)): position in ``source_rows`` and the
        chosen row, M = S * k with k = min(num_targets, candidates other than own).
        Sources whose own row is not a candidate get k draws from all candidates,
        which keeps every source at the same k (one rectangular draw, no loops).
    """
    device = source_rows.device
    candidates = candidate_mask.nonzero().squeeze(1)
    num_candidates = candidates.shape[0]
    empty = torch.empty(0, dtype=torch.long, device=device)
    if source_rows.shape[0] == 0 or num_candidates == 0:
        return empty, empty
    position_of_row = torch.full(
        (candidate_mask.shape[0],), -1, dtype=torch.long, device=device
    )
    position_of_row[candidates] = torch.arange(num_candidates, device=device)
    own_position = position_of_row[source_rows]
    own_is_candidate = own_position >= 0
    k = min(num_targets, num_candidates - int(bool(own_is_candidate.any())))
    if k <= 0:
        return empty, empty
    scores = random_scores((source_rows.shape[0], num_candidates), device, generator)
    sources_with_own = own_is_candidate.nonzero().squeeze(1)
    scores[sources_with_own, own_position[sources_with_own]] = -1.0
    chosen = scores.topk(k, dim=1).indices
    source_positions = torch.arange(
        source_rows.shape[0], device=device
    ).repeat_interleave(k)
    return source_positions, candidates[chosen.reshape(-1)]
