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

from . import registry
from .models import Embedder, build_trunk
from .speed import interleaved_times, print_table, summarize_rounds
from .train import RunConfig


def objective(loss, method, num_classes, embedding_size):
    """``f(embeddings, labels)`` of the registry's (loss, method) at full weight
    (the loss's miner included)."""
    cfg = RunConfig.make(loss=loss, method=method, embedding_size=embedding_size)
    generator = torch.Generator().manual_seed(0)
    fn, miner = registry.build_objective(cfg, num_classes, 1, generator)

    def call(embeddings, labels):
        indices = miner(embeddings, labels) if miner is not None else None
        return fn(embeddings, labels, indices)

    return call


def wrappers(num_classes, embedding_size):
    """method -> (baseline, with augmentation), built fresh from the registry,
    each method on the first loss of its comparison (MultiSimilarity for a method
    not yet compared)."""
    built = {}
    for name, method in registry.METHODS.items():
        if method.wrapper is None:
            continue
        loss = (*method.losses, "multisimilarity")[0]
        built[f"{method.label} ({loss})"] = tuple(
            objective(loss, m, num_classes, embedding_size) for m in ("none", name)
        )
    return built


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--m-per-class", type=int, default=4)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cached-from-block", type=int, default=15)
    parser.add_argument("--json", help="write the results here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
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
