"""What each augmenter of the family costs in the fast tier's training step.

    python -m benchmarks.family_speed --rounds 5 --json benchmarks/results/family_speed.json

One cached-feature training step (EfficientNet-Lite0's last block, head conv and
embedder on cached inputs, 64 px, batch 128 with 4 per class, embedding 128, the
benchmark's loss) with each wrapper at full weight, timed interleaved with the same
step without augmentation; ratios are medians of rounds [smallest, largest]. Time it
on an idle machine (check ``uptime`` and ``ps`` first).
"""

import argparse
import json
import platform

import torch
from pytorch_metric_learning import losses, miners

import pml_sft

from .models import Embedder, build_trunk
from .speed import interleaved_times, print_table, summarize_rounds


def wrappers(num_classes, embedding_size):
    """method -> (baseline loss, wrapped loss), each built fresh."""

    def ms():
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)

    def miner():
        return miners.MultiSimilarityMiner(epsilon=0.1)

    def pa():
        return losses.ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32)

    start = dict(warmup_iterations=0)
    return {
        "SFT (MultiSimilarity)": (ms(), pml_sft.SFTLoss(ms(), miner(), **start)),
        "translation (MultiSimilarity)": (
            ms(),
            pml_sft.FeatureTranslationLoss(ms(), miner(), **start),
        ),
        "Embedding Expansion (MultiSimilarity)": (
            ms(),
            pml_sft.EmbeddingExpansionLoss(ms(), miner(), **start),
        ),
        "Symmetrical Synthesis (MultiSimilarity)": (
            ms(),
            pml_sft.SymmetricalSynthesisLoss(ms(), miner(), **start),
        ),
        "Proxy Synthesis (ProxyAnchor)": (
            pa(),
            pml_sft.ProxySynthesisLoss(pa(), **start),
        ),
        "SFT (ProxyAnchor)": (pa(), pml_sft.SFTLoss(pa(), **start)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--m-per-class", type=int, default=4)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cached-from-block", type=int, default=15)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    classes = args.batch_size // args.m_per_class
    labels = torch.arange(classes).repeat_interleave(args.m_per_class)
    trunk = build_trunk("efficientnet_lite0", pretrained=True)
    stem, head = trunk.split(args.cached_from_block)
    embedder = Embedder(trunk.output_size, args.embedding_size)
    model = torch.nn.Sequential(head, embedder)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    with torch.no_grad():
        cached = stem(images)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step(loss_fn):
        def run():
            optimizer.zero_grad()
            loss_fn(model(cached), labels).backward()
            optimizer.step()

        return run

    built = wrappers(classes, args.embedding_size)
    fns = {}
    for method, (plain, wrapped) in built.items():
        fns[f"{method}: plain"] = step(plain)
        fns[f"{method}: augmented"] = step(wrapped)
    per_round = [interleaved_times(fns, args.repeats) for _ in range(args.rounds)]
    ratios = {
        f"{method}: step with / without augmentation": (
            lambda t, m=method: t[f"{m}: augmented"] / t[f"{m}: plain"]
        )
        for method in built
    }
    ratios_out, seconds = summarize_rounds(per_round, ratios)
    print_table(
        f"Cached-feature training step (block {args.cached_from_block} on, "
        f"{args.image_size} px, B={args.batch_size}, {torch.get_num_threads()} "
        f"thread(s), {args.rounds} rounds of {args.repeats})",
        ratios_out,
    )
    print("\nmedian seconds: " + json.dumps(seconds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    args=vars(args),
                    machine=platform.platform(),
                    torch=torch.__version__,
                    threads=torch.get_num_threads(),
                    ratios=ratios_out,
                    seconds=seconds,
                ),
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
