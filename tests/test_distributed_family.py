"""Every wrapper under PML's DistributedLossWrapper, 2 gloo ranks seeded apart: each
rank computes the loss and gradients of one process on the gathered batch, though
every rank sees the rows in another order (its own first). DAS and Proxy Synthesis
drew by row position from each rank's RNG at d4d82e6, and their ranks disagreed."""

import os

import pytest
import torch
import torch.distributed as dist
from pytorch_metric_learning import losses
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import pml_sft

from .helpers import run_ranks

WORLD, B, D, C = 2, 12, 8, 6
WRAPPERS = ["sft", "translation", "ee", "ss", "ps", "das", "see", "see_proxies"]


def _data(step):
    g = torch.Generator().manual_seed(200 + step)
    labels = torch.arange(C).repeat_interleave(WORLD * B // C)
    labels = labels[torch.randperm(len(labels), generator=g)]
    emb = (
        torch.randn(WORLD * B, D, generator=g)
        + 2 * torch.randn(C, D, generator=g)[labels]
    )
    return emb, labels


def _make(name):
    """The wrapper, with the same proxies everywhere (as DDP would keep them)."""
    torch.manual_seed(0)
    ms, start = losses.MultiSimilarityLoss(), dict(warmup_iterations=0)
    if name == "sft":
        return pml_sft.SFTLoss(ms, **start)
    if name == "translation":
        return pml_sft.FeatureTranslationLoss(ms, **start)
    if name == "ee":
        return pml_sft.EmbeddingExpansionLoss(ms, **start)
    if name == "ss":
        return pml_sft.SymmetricalSynthesisLoss(ms, **start)
    if name == "ps":
        return pml_sft.ProxySynthesisLoss(losses.ProxyAnchorLoss(C, D), **start)
    if name == "see":
        return pml_sft.SphericalEmbeddingExpansionLoss(ms, num_points=3, **start)
    if name == "see_proxies":
        return pml_sft.SphericalEmbeddingExpansionLoss(
            losses.ProxyAnchorLoss(C, D), num_points=3, **start
        )
    return pml_sft.DenselyAnchoredSamplingLoss(ms, C, D, **start)


def _steps(loss_fn, rows, steps=3):
    out = []
    for step in range(steps):
        emb, labels = _data(step)
        x = emb[rows].clone().requires_grad_()
        loss = loss_fn(x, labels[rows])
        loss.backward()
        out.append((loss.detach(), x.grad.clone()))
    return out


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    own = torch.arange(rank * B, (rank + 1) * B)
    results = {}
    for name in WRAPPERS:
        loss_fn = DistributedLossWrapper(_make(name))
        torch.manual_seed(rank)  # the ranks' RNGs apart
        results[name] = _steps(loss_fn, own)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(_worker, tmp_path_factory.mktemp("dist_family"), WORLD)


def _one_process(name):
    loss_fn = _make(name)
    for module in loss_fn.modules():  # keyed as under torch.distributed
        if hasattr(module, "keyed_draws"):
            module.keyed_draws = True
    torch.manual_seed(0)  # rank 0's: every call's seed is rank 0's
    return _steps(loss_fn, torch.arange(WORLD * B))


@pytest.mark.parametrize("name", WRAPPERS)
def test_every_wrapper_matches_one_process_on_every_rank(ranks, name):
    single = _one_process(name)
    for rank, result in enumerate(ranks):
        own = slice(rank * B, (rank + 1) * B)
        for (loss, grad), (single_loss, single_grad) in zip(result[name], single):
            # DistributedLossWrapper multiplies by the world size (DDP's gradient
            # averaging undoes it): compare loss / W and grad / W
            assert torch.allclose(loss / WORLD, single_loss, rtol=1e-5, atol=1e-6)
            assert torch.allclose(grad / WORLD, single_grad[own], rtol=1e-4, atol=1e-6)
