"""Speed of the feature transforms and of the loss wrapper, as ratios measured side by
side in one run (one thread by default).

    python -m benchmarks.speed                      # prints a markdown table
    python -m benchmarks.speed --json out.json      # also writes the numbers

Ratios, not seconds, are the point: each is the median time of the operation over
the median time of a reference operation on the same tensors, timed interleaved.
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
from pml_sft.functional import compilation


def median_times(fns, repeats, warmup=3):
    """Time several callables interleaved (so drift hits them alike); medians in s."""
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


def transform_speed(n, d, repeats, naive_rows):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1)
    b = F.normalize(torch.randn(n, d, generator=g), dim=1)
    rows = {}

    compilation.set_compile_mode("never")
    t = median_times(
        {
            "normalize": lambda: F.normalize(x, dim=1),
            "rotate (eager)": lambda: pml_sft.functional.rotate(x, a, b),
            "translate (eager)": lambda: pml_sft.functional.translate(x, a, b),
        },
        repeats,
    )
    rows["rotate, eager kernels"] = t["rotate (eager)"] / t["normalize"]
    rows["translate (renormalised)"] = t["translate (eager)"] / t["normalize"]

    compilation.set_compile_mode("auto")
    t0 = time.perf_counter()
    pml_sft.functional.rotate(x, a, b)  # first call compiles (or falls back)
    compile_seconds = time.perf_counter() - t0
    compiled_ok = compilation.compile_failure() is None and compilation.wants_compiled(
        x.numel()
    )
    t = median_times(
        {
            "normalize": lambda: F.normalize(x, dim=1),
            "rotate": lambda: pml_sft.functional.rotate(x, a, b),
        },
        repeats,
    )
    rows[
        (
            "rotate, default (auto: compiled at this size)"
            if compiled_ok
            else "rotate, default (auto: eager, small or no compiler)"
        )
    ] = (t["rotate"] / t["normalize"])

    xs, as_, bs = x[:naive_rows], a[:naive_rows], b[:naive_rows]
    t = median_times(
        {
            "rotate": lambda: pml_sft.functional.rotate(xs, as_, bs),
            "naive": lambda: naive_rotate(xs, as_, bs),
            "normalize": lambda: F.normalize(xs, dim=1),
        },
        max(3, repeats // 5),
    )
    rows[f"naive per-row D x D matrices (bmm), first {naive_rows} rows"] = (
        t["naive"] / t["normalize"]
    )
    naive_over_rotate = t["naive"] / t["rotate"]
    return rows, compile_seconds, compiled_ok, naive_over_rotate


def overhead_ratios(t):
    """The wrapper's ratios from one round's median times ``t``."""
    return {
        "wrapped step / inner loss on the enlarged batch": t["wrapped"] / t["inner"],
        "wrapper's own work (wrapped - inner) / inner": (t["wrapped"] - t["inner"])
        / t["inner"],
        "transform alone (centres, targets, rotation; fwd+bwd) / inner": t["transform"]
        / t["inner"],
        "forward only: transform / inner loss": t["transform_forward"]
        / t["inner_forward"],
    }


def wrapper_overhead(batch_size, d, per_class, repeats, mode, rounds=1):
    """Ratios for one compile mode ("auto" is the default: the SFT augmenter's fused
    batch path, compiled; "never" is the general eager path, for comparison): for
    each ratio the median over ``rounds`` rounds of interleaved timing, with the
    smallest and largest round (the spread shows how much the machine drifts)."""
    compilation.reset_compile_state()
    compilation.set_compile_mode(mode)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(batch_size // per_class).repeat_interleave(per_class)
    inner = losses.MultiSimilarityLoss()
    wrapped = pml_sft.SFTLoss(inner, generator=torch.Generator().manual_seed(2))
    emb = torch.randn(batch_size, d, generator=g, requires_grad=True)
    aug, aug_labels, _ = pml_sft.SphericalFeatureTransform()(emb.detach(), labels)
    enlarged = torch.cat([emb.detach(), aug]).requires_grad_()
    enlarged_labels = torch.cat([labels, aug_labels])
    sft = wrapped.transform
    upstream = torch.randn(len(aug), d, generator=g)

    def inner_step():
        inner(enlarged, enlarged_labels).backward()

    def wrapped_step():
        wrapped(emb, labels).backward()

    def transform_only():
        sft(emb, labels)[0].backward(upstream)

    def inner_forward():
        inner(enlarged, enlarged_labels)

    def transform_forward():
        sft(emb, labels)

    fns = {
        "inner": inner_step,
        "wrapped": wrapped_step,
        "transform": transform_only,
        "inner_forward": inner_forward,
        "transform_forward": transform_forward,
    }
    per_round = []
    for _ in range(rounds):
        t = median_times(fns, repeats, warmup=5)
        per_round.append((overhead_ratios(t), t))
    compiled = mode != "never" and compilation.compile_failure() is None
    ratios = {
        name: {
            "median": statistics.median(r[name] for r, _ in per_round),
            "min": min(r[name] for r, _ in per_round),
            "max": max(r[name] for r, _ in per_round),
        }
        for name in per_round[0][0]
    }
    seconds = {name: statistics.median(t[name] for _, t in per_round) for name in fns}
    return ratios, dict(seconds, compiled=compiled, rounds=[t for _, t in per_round])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--naive-rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--m-per-class", type=int, default=4)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of interleaved timing for the loss wrapper (median and range)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows, compile_s, compiled_ok, naive_over_rotate = transform_speed(
        args.n, args.d, args.repeats, args.naive_rows
    )
    overhead = {}
    for mode in ("auto", "never"):
        overhead[mode] = wrapper_overhead(
            args.batch_size,
            args.d,
            args.m_per_class,
            args.repeats,
            mode,
            args.rounds,
        )
    print(
        f"## Transform time / torch.nn.functional.normalize, N={args.n}, D={args.d}, "
        f"{args.threads} thread(s), float32, distinct centre pair per row\n"
    )
    print("| operation | time / normalize |\n| --- | --- |")
    for name, ratio in rows.items():
        print(f"| {name} | {ratio:.2f}x |")
    print(f"\nnaive D x D approach / rotate (same rows): {naive_over_rotate:.0f}x")
    print(f"first compiled call (compile time): {compile_s:.1f} s")
    print(
        f"\n## Loss wrapper, B={args.batch_size} ({args.m_per_class} per class), D={args.d}, "
        "MultiSimilarityLoss, forward + backward\n\n"
        f"Median over {args.rounds} rounds of {args.repeats} interleaved repeats "
        "[smallest round, largest round].\n"
    )
    default = (
        "default (auto: fused batch path, compiled)"
        if overhead["auto"][1]["compiled"]
        else "default (auto), compiler unavailable: eager"
    )
    print(f"| measure | {default} | eager (mode never) |\n| --- | --- | --- |")
    for name in overhead["auto"][0]:
        cells = [
            "{median:.3f} [{min:.3f}, {max:.3f}]".format(**overhead[mode][0][name])
            for mode in ("auto", "never")
        ]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    args=vars(args),
                    machine=platform.platform(),
                    processor=platform.processor(),
                    torch=torch.__version__,
                    transform_ratios=rows,
                    naive_over_rotate=naive_over_rotate,
                    compile_seconds=compile_s,
                    compiled=compiled_ok,
                    wrapper_ratios={m: v[0] for m, v in overhead.items()},
                    wrapper_seconds={m: v[1] for m, v in overhead.items()},
                ),
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
