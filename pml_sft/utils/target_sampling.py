"""Vectorised choice of target classes for feature transforms.

:func:`draw_targets` picks, for every source sample, distinct target rows uniformly
among the rows it is allowed to move to. Its random scores come either from a
generator or *keyed by content* (:func:`keyed_scores`): a hash of the sample's bits,
the candidate's label and a per-call seed. With keyed scores, shuffling the batch
shuffles the targets with it, and processes that see the same samples in different
orders (ranks after PML's ``DistributedLossWrapper`` gathered a batch) choose the
same targets.
"""

import torch

from ..upstream.sft_loss import _draw_targets as draw_targets  # noqa: F401
from . import distributed

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


def row_keys(x, sampled_columns=16):
    """A 31-bit hash of each row's bits: the same for the same row wherever it is in
    the batch (integer sums are exact, so no float summation order enters).

    It combines the sum of all the row's bit patterns with a weighted sum of the bits
    of a few evenly spaced columns; two distinct rows share a key only if both agree,
    which for real embeddings means exact duplicates (which then share targets).
    """
    x = x.detach().contiguous()
    bits = x.view(torch.int16 if x.element_size() == 2 else torch.int32)
    width = bits.shape[1]
    columns = torch.linspace(0, width - 1, min(sampled_columns, width)).long()
    weights = mix31(columns * 0x9E3779B + 0x7F4A7C1) & ((1 << 20) - 1) | 1
    columns, weights = columns.to(x.device), weights.to(x.device)
    total = bits.sum(dim=1, dtype=torch.int64)
    sampled = (fold31(bits.index_select(1, columns)) * weights).sum(dim=1)
    return fold31(total * 0x2545F49 + sampled)


def draw_seed(generator=None):
    """A 31-bit seed for one call, from ``generator`` or the global RNG."""
    device = "cpu" if generator is None else generator.device
    return int(torch.randint(0, MASK31, (1,), generator=generator, device=device))


def keyed_scores(source_keys, candidate_labels, seed):
    """Scores in [0, 1) for every (source, candidate) pair, from the sources' keys
    (:func:`row_keys`), the candidates' labels and a seed (:func:`draw_seed`)."""
    candidate_keys = mix31(fold31(candidate_labels) ^ seed)
    mixed = mix31(source_keys.unsqueeze(1) * 0x2545F49 + candidate_keys.unsqueeze(0))
    return mixed.to(torch.float64) / (MASK31 + 1)


def random_scores(size, device, generator=None):
    """Scores in [0, 1) of the given size, from ``generator`` (drawn on its own
    device) or the global RNG."""
    if generator is None:
        return torch.rand(size, device=device)
    return torch.rand(size, generator=generator, device=generator.device).to(device)


def target_scores(embeddings, center_labels, keyed, generator=None, keys=None):
    """(N, K) scores ranking each row's target classes: keyed by the rows' content
    (``keys``, from :func:`row_keys` when not given) and a per-call seed (under
    torch.distributed rank 0's, so that every rank that sees the same rows draws
    the same targets), or plain random draws."""
    if not keyed:
        size = (embeddings.shape[0], center_labels.shape[0])
        return random_scores(size, embeddings.device, generator)
    seed = call_seed(embeddings.device, generator)
    keys = row_keys(embeddings) if keys is None else keys
    return keyed_scores(keys, center_labels, seed)


def call_seed(device, generator=None):
    """A seed for one call: from ``generator`` or the global RNG, and under
    torch.distributed rank 0's (sent from ``device``, which the backend must
    support), so that every rank draws alike."""
    seed = draw_seed(generator)
    if distributed.is_distributed():
        seed = distributed.broadcast_from_first(seed, device)
    return seed


def row_uniforms(keys, count, seed):
    """(N, count) numbers in [0, 1) for rows with these content keys: the same for
    the same row wherever it stands in the batch."""
    columns = torch.arange(count, device=keys.device)
    return keyed_scores(keys, columns, seed)


def checked_keyed_draws(keyed_draws):
    """``keyed_draws`` if it is None, True or False; else a TypeError."""
    if not (keyed_draws is None or isinstance(keyed_draws, bool)):
        raise TypeError(f"keyed_draws must be None, True or False, got {keyed_draws!r}")
    return keyed_draws


def is_keyed(keyed_draws):
    """Whether draws are keyed: as asked, or (None) under torch.distributed."""
    return distributed.is_distributed() if keyed_draws is None else keyed_draws


def checked_generator(generator):
    """``generator`` if it is None or a ``torch.Generator``; else a TypeError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}"
        )
    return generator


def generator_state(generator):
    """The state to save for a generator (None for the global RNG)."""
    return {"generator": None if generator is None else generator.get_state()}


def load_generator_state(generator, state, owner):
    """Restore a generator from :func:`generator_state`; an error when one side has
    a generator and the other has none."""
    saved = (state or {}).get("generator")
    if (saved is None) != (generator is None):
        raise ValueError(
            f"cannot load the random draws of {owner}: the state was saved "
            f"{'without' if saved is None else 'with'} a generator, and this one has "
            f"{'one' if saved is None else 'none'}. Build both alike (without a "
            "generator the draws come from torch's global RNG: save "
            "torch.get_rng_state(), and on CUDA torch.cuda.get_rng_state(), with the "
            "checkpoint to resume them)"
        )
    if saved is not None:
        generator.set_state(saved)
