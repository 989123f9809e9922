"""Speed of the feature transforms and of the loss wrapper, as ratios measured side by
side in one run.

    python -m benchmarks.speed                      # prints markdown tables
    python -m benchmarks.speed --json out.json      # also writes the numbers

Ratios, not seconds, are the point: each is the median time of the operation over
the median time of a reference operation, timed interleaved (so drift hits both
alike), in several rounds (median and range over rounds).

* ``rotate`` and ``translate`` against ``F.normalize`` on the same (N, D) tensor, and
  the naive per-row D x D approach against ``rotate`` (``--threads``, default one).
* The loss wrapper's own work (centres, target draws, transform, concatenation,
  forward and backward): the wrapped loss minus the inner loss on the enlarged
  batch, as a share of the inner loss step and, as a user feels it, of a **full
  training step** (backbone forward and backward at ``--image-size``, embedder,
  wrapped loss, optimiser step) with ``--backbone`` (all cores).
* The same share of a **cached-feature step** (``--cached-from-block``, the fast
  tier: the frozen blocks' output cached, the last block, embedder and loss trained).
* With ``--compile``: the same full step with the backbone wrapped in
  ``torch.compile`` (the recipe in docs/benchmarks.md), against the eager step.
"""

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses

import pml_sft

from .models import Embedder, build_trunk


def interleaved_times(fns, repeats, warmup=2):
    """Median seconds of several callables timed interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in samples.items()}


def ratio_rounds(fns, ratios, repeats, rounds):
    """``ratios``: name -> function of the medians of one round; returns name ->
    {median, min, max} over rounds, and the median seconds of every callable."""
    return summarize_rounds(
        [interleaved_times(fns, repeats) for _ in range(rounds)], ratios
    )


def summarize_rounds(per_round, ratios):
    out = {}
    for name, fn in ratios.items():
        values = [fn(t) for t in per_round]
        out[name] = dict(
            median=statistics.median(values), min=min(values), max=max(values)
        )
    seconds = {n: statistics.median(t[n] for t in per_round) for n in per_round[0]}
    return out, seconds


def naive_rotate(x, a, b):
    """Per-row explicit D x D rotation matrices, applied with bmm (the naive way)."""
    d = x.shape[1]
    c = (a * b).sum(1, keepdim=True)
    v = F.normalize(b - c * a, dim=1)
    s = (1 - c**2).clamp_min(0).sqrt()
    eye = torch.eye(d, dtype=x.dtype)
    aa = a.unsqueeze(2) * a.unsqueeze(1)
    vv = v.unsqueeze(2) * v.unsqueeze(1)
    va = v.unsqueeze(2) * a.unsqueeze(1)
    r = (
        eye
        + (c - 1).unsqueeze(2) * (aa + vv)
        + s.unsqueeze(2) * (va - va.transpose(1, 2))
    )
    return torch.bmm(r, x.unsqueeze(2)).squeeze(2)


def transform_ratios(n, d, repeats, rounds, naive_rows):
    g = torch.Generator().manual_seed(0)
    x, a, b = (F.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(3))
    rows = slice(0, naive_rows)
    fns = {
        "normalize": lambda: F.normalize(x, dim=1),
        "rotate": lambda: pml_sft.functional.rotate(x, a, b),
        "translate": lambda: pml_sft.functional.translate(x, a, b),
        "rotate (first rows)": lambda: pml_sft.functional.rotate(
            x[rows], a[rows], b[rows]
        ),
        "naive (first rows)": lambda: naive_rotate(x[rows], a[rows], b[rows]),
    }
    ratios = {
        "rotate / normalize": lambda t: t["rotate"] / t["normalize"],
        "translate / normalize": lambda t: t["translate"] / t["normalize"],
        f"naive D x D / rotate ({naive_rows} rows)": lambda t: t["naive (first rows)"]
        / t["rotate (first rows)"],
    }
    return ratio_rounds(fns, ratios, repeats, rounds)


def loss_step(loss_fn, emb, labels):
    def run():
        e = emb.detach().requires_grad_(True)
        loss_fn(e, labels).backward()

    return run


def step_ratios(args):
    """The ratios of the timed functions of :func:`wrapper_and_full_step`."""

    def own(t):
        return t["wrapped"] - t["inner (enlarged batch)"]

    ratios = {
        "wrapper's own work / inner loss step (enlarged batch)": lambda t: own(t)
        / t["inner (enlarged batch)"],
        "wrapper's own work / full training step": lambda t: own(t) / t["full step"],
        "whole augmentation cost (wrapped - inner on the batch) / full step": lambda t: (
            t["wrapped"] - t["inner (batch)"]
        )
        / t["full step"],
    }
    if args.cached_from_block:
        ratios["wrapper's own work / cached-feature step"] = lambda t: (
            own(t) / t["cached-feature step"]
        )
    if args.compile:
        ratios["full step, compiled backbone / eager"] = (
            lambda t: t["full step, compiled backbone"] / t["full step"]
        )
    return ratios


def loss_steps(args, labels, inner, wrapped):
    """The loss steps timed: the inner loss on the batch and on the batch enlarged
    by SFT's samples, and the wrapper on the batch."""
    emb = F.normalize(torch.randn(args.batch_size, args.embedding_size), dim=1)
    aug, aug_labels, _ = pml_sft.SphericalFeatureTransform()(emb, labels)
    enlarged = torch.cat([emb, aug])
    enlarged_labels = torch.cat([labels, aug_labels])
    return {
        "inner (enlarged batch)": loss_step(inner, enlarged, enlarged_labels),
        "inner (batch)": loss_step(inner, emb, labels),
        "wrapped": loss_step(wrapped, emb, labels),
    }


def wrapper_and_full_step(args):
    """The wrapper's own work as a share of the inner loss step and of a full step."""
    torch.manual_seed(0)
    classes = args.batch_size // args.m_per_class
    labels = torch.arange(classes).repeat_interleave(args.m_per_class)
    trunk = build_trunk(args.backbone, pretrained=args.pretrained)
    embedder = Embedder(trunk.output_size, args.embedding_size)
    model = torch.nn.Sequential(trunk, embedder)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    inner = losses.MultiSimilarityLoss()
    augmenter = pml_sft.SphericalFeatureTransform(
        generator=torch.Generator().manual_seed(0)
    )
    wrapped = pml_sft.FeatureTransformLoss(inner, augmenter, warmup_iterations=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def full_step(net):
        def run():
            optimizer.zero_grad()
            wrapped(net(images), labels).backward()
            optimizer.step()

        return run

    loss_fns = loss_steps(args, labels, inner, wrapped)
    step_fns = {"full step": full_step(model)}
    if args.cached_from_block:
        # the fast tier: the frozen blocks' output is cached, the step trains the
        # remaining blocks, the embedder and the loss
        stem, head = trunk.split(args.cached_from_block)
        with torch.no_grad():
            cached = stem(images)
        head_model = torch.nn.Sequential(head, embedder)

        def cached_step():
            optimizer.zero_grad()
            wrapped(head_model(cached), labels).backward()
            optimizer.step()

        step_fns["cached-feature step"] = cached_step
    if args.compile:
        step_fns["full step, compiled backbone"] = full_step(
            torch.nn.Sequential(torch.compile(trunk), embedder)
        )
    # the loss steps take milliseconds and need many repeats; the full step takes
    # about a second: each group is timed interleaved within itself, round by round
    per_round = [
        {
            **interleaved_times(loss_fns, args.repeats),
            **interleaved_times(step_fns, args.step_repeats, warmup=1),
        }
        for _ in range(args.rounds)
    ]

    return summarize_rounds(per_round, step_ratios(args))


def print_table(title, ratios):
    print(f"\n## {title}\n")
    print("| measure | median [smallest round, largest round] |\n| --- | --- |")
    for name, r in ratios.items():
        print(f"| {name} | {r['median']:.4g} [{r['min']:.4g}, {r['max']:.4g}] |")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--naive-rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--pretrained", type=lambda s: s == "true", default=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--m-per-class", type=int, default=4)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--cached-from-block",
        type=int,
        default=15,
        help="also time the fast tier's step (blocks from this one trained, the "
        "frozen ones cached; efficientnet_lite0 only; 0: skip)",
    )
    parser.add_argument("--json", help="write the results here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    cores = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    rotate_ratios, rotate_seconds = transform_ratios(
        args.n, args.d, args.repeats, args.rounds, args.naive_rows
    )
    torch.set_num_threads(cores)
    if args.backbone != "efficientnet_lite0":
        args.cached_from_block = 0
    wrapper_ratios, step_seconds = wrapper_and_full_step(args)
    print_table(
        f"Transforms, N={args.n}, D={args.d}, {args.threads} thread(s), float32, "
        f"eager, {args.rounds} rounds of {args.repeats}",
        rotate_ratios,
    )
    print_table(
        f"Loss wrapper (SFTLoss(MultiSimilarityLoss()), defaults) in a training step: "
        f"{args.backbone} (pretrained={args.pretrained}) at {args.image_size} px, "
        f"B={args.batch_size} ({args.m_per_class} per class), embedding "
        f"{args.embedding_size}, {cores} thread(s), {args.rounds} rounds of "
        f"{args.repeats} loss steps and {args.step_repeats} full steps",
        wrapper_ratios,
    )
    print("\nmedian seconds: " + json.dumps({**rotate_seconds, **step_seconds}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    args=vars(args),
                    machine=platform.platform(),
                    processor=platform.processor(),
                    torch=torch.__version__,
                    threads_for_steps=cores,
                    transform_ratios=rotate_ratios,
                    transform_seconds=rotate_seconds,
                    step_ratios=wrapper_ratios,
                    step_seconds=step_seconds,
                ),
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
