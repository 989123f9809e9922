"""SFT under DDP, runnable on CPUs (gloo) or GPUs (nccl):

    torchrun --nproc_per_node=2 benchmarks/ddp_example.py            # CPU, gloo
    torchrun --nproc_per_node=4 benchmarks/ddp_example.py --backend nccl

Each rank trains on its own part of every batch; PML's DistributedLossWrapper gathers
the embeddings, so the SFT wrapper sees the whole batch on every rank and makes the
same augmented samples everywhere (the loss and gradients of one process on the whole
batch); the class centres are identical on all ranks.
"""

import argparse
import os

import torch
import torch.distributed as dist
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import pml_sft


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(
        f"cuda:{int(os.environ['LOCAL_RANK'])}" if args.backend == "nccl" else "cpu"
    )
    torch.manual_seed(0)  # same model and data stream on every rank
    classes, dim, per_rank = 16, 32, 32
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Linear(dim, dim).to(device)
    )
    loss_fn = DistributedLossWrapper(
        pml_sft.FeatureTransformLoss(
            losses.MultiSimilarityLoss(),
            pml_sft.SphericalFeatureTransform(
                centers=pml_sft.MovingAverageClassCenters(classes, dim),  # synced
                generator=torch.Generator().manual_seed(1),  # same seed on every rank
            ),
            miner=miners.MultiSimilarityMiner(),
            warmup_iterations=0,  # a toy run: augment from the first step
        )
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    means = 2 * torch.randn(classes, dim)
    for step in range(args.steps):
        labels = torch.arange(classes).repeat_interleave(world * per_rank // classes)
        labels = labels[torch.randperm(len(labels))]
        x = means[labels] + torch.randn(len(labels), dim)
        own = slice(rank * per_rank, (rank + 1) * per_rank)
        optimizer.zero_grad()
        loss = loss_fn(model(x[own].to(device)), labels[own].to(device))
        loss.backward()
        optimizer.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step}: loss {loss.item() / world:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
