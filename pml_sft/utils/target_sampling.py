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
    num_sources, num_rows = source_rows.shape[0], candidate_mask.shape[0]
    num_candidates = int(candidate_mask.sum())
    own_is_candidate = candidate_mask.index_select(0, source_rows)
    k = min(num_targets, num_candidates - int(bool(own_is_candidate.any())))
    if num_sources == 0 or k <= 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    # random scores in (0, 1) for candidates; -1 for non-candidates and own rows,
    # which top-k then never picks since k <= the number of valid candidates
    scores = random_scores((num_sources, num_rows), device, generator)
    if num_candidates < num_rows:
        scores = scores.masked_fill(~candidate_mask, -1.0)
    scores = scores.scatter(1, source_rows.unsqueeze(1), -1.0)
    if k == 1:
        target_rows = scores.argmax(dim=1)
        return torch.arange(num_sources, device=device), target_rows
    chosen = scores.topk(k, dim=1).indices
    source_positions = torch.arange(num_sources, device=device).repeat_interleave(k)
    return source_positions, chosen.reshape(-1)
