"""torch.distributed helpers for keeping class centres identical across ranks."""

import torch


def is_distributed():
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def all_gather_rows(x):
    """Every rank's rows of ``x`` (no gradient), concatenated in rank order, and the
    slice of this rank's own rows. Ranks may hold different numbers of rows."""
    world_size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    torch.distributed.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded.contiguous())
    rows = torch.cat([g[:n] for g, n in zip(gathered, sizes)])
    start = sum(sizes[:rank])
    return rows, slice(start, start + x.shape[0])


def all_reduce_sum(*tensors):
    """Sum tensors over all ranks, in place."""
    for t in tensors:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return tensors


def broadcast_from_first(value, device):
    """The int ``value`` of rank 0, on every rank (one small collective)."""
    t = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.broadcast(t, src=0)
    return int(t)
