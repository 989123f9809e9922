"""Vectorised choice of target classes for feature transforms.

Random scores for every (sample, candidate class) pair come either from a generator
(:func:`random_scores`) or *keyed by content* (:func:`keyed_scores`): a hash of the
sample's bits, the candidate's label and a per-call seed. With keyed scores,
shuffling the batch shuffles the targets with it, and processes that see the same
samples in different orders (ranks after PML's ``DistributedLossWrapper`` gathered a
batch) choose the same targets.
"""

import functools

import torch

MASK31 = (1 << 31) - 1


def mix31(z):
    """An integer hash on 31-bit values (int64 tensors; no overflow)."""
    z = z & MASK31
    z = ((z ^ (z >> 16)) * 0x45D9F3B) & MASK31
    z = ((z ^ (z >> 16)) * 0x45D9F3B) & MASK31
    return z ^ (z >> 16)


def fold31(x):
    """Fold int64 values (e.g. labels, up to 64 bits) into 31 bits."""
    x = x.long()
    return (x ^ (x >> 31) ^ (x >> 62)) & MASK31


@functools.lru_cache(maxsize=64)
def _column_weights(width, device, sampled_columns=16):
    """Evenly spaced columns and odd 20-bit weights for :func:`row_keys`."""
    columns = torch.linspace(0, width - 1, min(sampled_columns, width)).long()
    weights = mix31(columns * 0x9E3779B + 0x7F4A7C1) & ((1 << 20) - 1) | 1
    return columns.to(device), weights.to(device)


def row_keys(x):
    """A 31-bit hash of each row's bits: the same for the same row wherever it is in
    the batch (integer sums are exact, so no float summation order enters).

    It combines the sum of all the row's bit patterns with a weighted sum of the bits
    of a few evenly spaced columns; two distinct rows share a key only if both agree,
    which for real embeddings means exact duplicates (which then share targets).
    """
    x = x.detach().contiguous()
    bits = x.view(torch.int16 if x.element_size() == 2 else torch.int32)
    columns, weights = _column_weights(bits.shape[1], bits.device)
    total = bits.sum(dim=1, dtype=torch.int64)
    sampled = (fold31(bits.index_select(1, columns)) * weights).sum(dim=1)
    return fold31(total * 0x2545F49 + sampled)


def draw_seed(generator=None, device="cpu"):
    """A 31-bit seed for one call, from ``generator`` or the global RNG."""
    return int(_draw(torch.randint, device, generator, 0, MASK31, (1,)).item())


def keyed_scores(source_keys, candidate_labels, seed):
    """Scores in [0, 1) for every (source, candidate) pair, from the sources' keys
    (:func:`row_keys`), the candidates' labels and a seed (:func:`draw_seed`)."""
    candidate_keys = mix31(fold31(candidate_labels) ^ seed)
    mixed = mix31(source_keys.unsqueeze(1) * 0x2545F49 + candidate_keys.unsqueeze(0))
    return mixed.to(torch.float64) / (MASK31 + 1)


def random_scores(num_sources, num_candidates, device, generator=None):
    """Scores in [0, 1) from ``generator`` (on its own device) or the global RNG."""
    return _draw(torch.rand, device, generator, num_sources, num_candidates)


def random_other_rows(source_rows, num_rows, generator=None):
    """One target per source when every one of ``num_rows`` (>= 2) rows is a
    candidate: a uniformly random row other than the source's own, as the own row
    plus a random offset in [1, num_rows) (three small ops, no (S, K) scores).

    Returns (source_positions (S,), target_rows (S,)) like :func:`sample_target_rows`.
    """
    device = source_rows.device
    offsets = random_offsets(source_rows.shape[0], num_rows, device, generator)
    targets = (source_rows + offsets).remainder_(num_rows)
    return torch.arange(source_rows.shape[0], device=device), targets


def random_offsets(num_sources, num_rows, device, generator=None):
    """``num_sources`` offsets uniform in [1, num_rows), from ``generator`` (on its
    own device) or the global RNG: (own row + offset) % num_rows is then a uniformly
    random other row (:func:`random_other_rows`)."""
    return _draw(torch.randint, device, generator, 1, num_rows, (num_sources,))


def _draw(sample, device, generator, *args):
    """``sample(*args)`` (``torch.rand``, ``torch.randint``) on ``device`` from the
    global RNG, or from ``generator`` on the generator's own device and then moved
    to ``device``."""
    if generator is None:
        return sample(*args, device=device)
    return sample(*args, generator=generator, device=generator.device).to(device)


def sample_target_rows(source_rows, candidate_mask, num_targets, score_fn):
    """For each source, pick up to ``num_targets`` distinct candidate rows other than
    its own, uniformly at random.

    Args:
        source_rows: (S,) row of each source's own class centre (>= 0).
        candidate_mask: (K,) which centre rows may be targets.
        num_targets: targets per source.
        score_fn: called with the source positions it needs (None: all), returns
            (S, K) scores in [0, 1): :func:`random_scores` or :func:`keyed_scores`.

    Returns:
        (source_positions (M,), target_rows (M,)): position in ``source_rows`` and the
        chosen row, M = S * k with k = min(num_targets, candidates other than own).
        Sources whose own row is not a candidate get k draws from all candidates,
        which keeps every source at the same k (one rectangular draw, no loops).
    """
    device = source_rows.device
    num_sources, num_rows = source_rows.shape[0], candidate_mask.shape[0]
    num_candidates = int(candidate_mask.sum())
    if num_candidates == num_rows:  # every row is a candidate, each source's own too
        own_excluded = 1
    else:
        own_excluded = int(bool(candidate_mask.index_select(0, source_rows).any()))
    k = min(num_targets, num_candidates - own_excluded)
    if num_sources == 0 or k <= 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    # scores in [0, 1) for candidates; -1 for non-candidates and own rows, which
    # top-k then never picks since k <= the number of valid candidates
    scores = score_fn()
    if num_candidates < num_rows:
        scores = scores.masked_fill(~candidate_mask, -1.0)
    scores = scores.scatter(1, source_rows.unsqueeze(1), -1.0)
    if k == 1:
        return torch.arange(num_sources, device=device), scores.argmax(dim=1)
    chosen = scores.topk(k, dim=1).indices
    source_positions = torch.arange(num_sources, device=device).repeat_interleave(k)
    return source_positions, chosen.reshape(-1)
