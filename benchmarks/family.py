"""The feature-augmentation family, compared with paired seeds and intervals.

    python -m benchmarks.family --datasets emoji icons --seeds 0 1 2 3 4 5 6 7

For each seed every method trains from the same initialisation on the same batch
stream (the sampler's numpy stream; the augmenters draw from torch's), so the
difference to the baseline of the same seed is a paired difference. Methods:
SFT and translation on every loss; Embedding Expansion (ee) and Symmetrical
Synthesis (ss) on MultiSimilarity, Triplet (semi-hard) and Contrastive; Proxy
Synthesis (ps) on ProxyAnchor and NormalizedSoftmax. Every augmenter uses the
validated schedule (no augmentation for the first half, a ramp over the next
quarter). Test classes, final epoch (the rule fixed in advance). Finished runs are
reused, so the comparison resumes; ``--max-runs`` trains at most that many new
runs, so a session can do a part of it and commit what is finished. ``--reuse``
takes the runs.csv of a committed part: its rows count as finished runs (the run
directories under ``--out`` are not kept between machines; the rows name the
commit that trained them). Each run records a fingerprint of its data (the
images, the cached features and the labels) and the CPU; a method and its baseline
are paired only when both agree (rows from before they were recorded pair with
anything). Train each seed's runs on one machine in one session: runs
are bit-for-bit repeatable there, not across machines. A (data set, loss, seed)
block left incomplete on another machine is trained again whole (its earlier rows
go to superseded_runs.csv).

Results in ``--out``: runs.csv (one row per run), summary.csv (per data set, loss
and method: means and stds over seeds, and the paired difference to the baseline
with a 95 % t interval over seeds), sft_vs_translation.csv (SFT minus translation
per data set and loss, paired the same way), summary.md and paired_differences.png.
"""

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .compare import machine_description, run_all, write_csv
from .train import (
    METHOD_OPTIONS,
    RunConfig,
    add_config_arguments,
    device_description,
    git_commit,
    run_dir_result,
)

# loss -> the methods compared on it (besides the baseline, "none")
FAMILY = {
    "multisimilarity": ("translation", "sft", "ee", "ss"),
    "triplet": ("translation", "sft", "ee", "ss"),
    "contrastive": ("translation", "sft", "ee", "ss"),
    "proxyanchor": ("translation", "sft", "ps"),
    "normsoftmax": ("translation", "sft", "ps"),
}
METHOD_NAMES = {
    "none": "baseline",
    "translation": "translation",
    "sft": "SFT",
    "ee": "Embedding Expansion",
    "ss": "Symmetrical Synthesis",
    "ps": "Proxy Synthesis",
}
PAIRED_METRICS = ("recall_at_1", "mean_average_precision_at_r")
SFT_VERDICT = {"above": "SFT higher", "below": "SFT lower"}
# the learning rates chosen on validation classes for the fast tier (2026-11,
# benchmarks/results/pretrained_lr_tuning); normsoftmax takes MultiSimilarity's
LOSS_LR = {
    "contrastive": 1e-2,
    "multisimilarity": 3e-3,
    "triplet": 3e-3,
    "proxyanchor": 3e-3,
    "normsoftmax": 3e-3,
}


def family_configs(base, datasets, losses, seeds, chosen=None):
    """Every run of the comparison, seed-major (a partial run holds whole pairs
    first). ``chosen`` (benchmarks.family_tuning's chosen.json) gives, per data set,
    loss and method, the learning rate and options chosen on validation classes;
    without it each loss takes LOSS_LR and each method its paper's defaults."""
    configs = []
    for seed in seeds:
        for dataset in datasets:
            for loss in losses:
                for method in ("none", *FAMILY[loss]):
                    if chosen is None:
                        options = {"lr": LOSS_LR.get(loss, RunConfig().lr)}
                    else:
                        try:
                            options = chosen[dataset][loss][method]
                        except KeyError:
                            raise ValueError(
                                f"the chosen settings have no entry for {dataset}, "
                                f"{loss}, {method}: finish its tuning first"
                            ) from None
                    configs.append(
                        RunConfig(
                            **{**base, **options},
                            dataset=dataset,
                            loss=loss,
                            method=method,
                            seed=seed,
                        )
                    )
    return configs


def committed_results(configs, paths):
    """Results of finished runs read back from committed runs.csv files: the rows
    whose run name is one of ``configs``' (a row carries the metrics the summary
    needs, the training time and the commit that trained it)."""
    by_name = {c.name(): c for c in configs}
    results = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                config = by_name.get(row["name"])
                if config is None:
                    continue
                results[row["name"]] = {
                    "name": row["name"],
                    "config": dataclasses.asdict(config),
                    "metrics": {m: float(row[m]) for m in PAIRED_METRICS},
                    "train_seconds": float(row["train_seconds"]),
                    "commit": row.get("commit") or None,
                    "data_fingerprint": row.get("data_fingerprint") or None,
                    "cpu": row.get("cpu") or None,
                }
    return results


def t_interval(values, level=0.95):
    """Mean and the two-sided t interval of the mean (NaN bounds for one value)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * stats.sem(values)
    return mean, mean - half, mean + half


def comparable(a, b):
    """Whether two results trained on the same data and the same kind of CPU: their
    data fingerprints agree, and so do their CPUs, where both rows record them
    (rows from before they were recorded pair with anything). The same run with
    torch's AVX2 kernels instead of its AVX-512 ones, on the same data, ended 3
    points of validation R@1 apart (2026-12-02)."""
    return all(
        not a.get(key) or not b.get(key) or a[key] == b[key]
        for key in ("data_fingerprint", "cpu")
    )


def runs_by_arm(results):
    """(dataset, loss, method) -> {seed: result}."""
    by_arm = defaultdict(dict)
    for r in results:
        c = r["config"]
        by_arm[(c["dataset"], c["loss"], c["method"])][c["seed"]] = r
    return by_arm


def loss_order(loss):
    """The position of ``loss`` in FAMILY (unknown losses last), for sorting."""
    return list(FAMILY).index(loss) if loss in FAMILY else 99


def paired_difference(runs, reference):
    """The paired difference of two arms given as {seed: result}: ``paired_seeds``
    (both runs there and comparable), ``unpaired_seeds`` (both there, not
    comparable) and, per metric, the mean difference with its 95 % t interval
    over the paired seeds (NaN without any)."""
    both = sorted(set(runs) & set(reference))
    paired = [s for s in both if comparable(runs[s], reference[s])]
    row = dict(paired_seeds=len(paired), unpaired_seeds=len(both) - len(paired))
    for m in PAIRED_METRICS:
        mean = low = high = float("nan")
        if paired:
            deltas = [
                runs[s]["metrics"][m] - reference[s]["metrics"][m] for s in paired
            ]
            mean, low, high = t_interval(deltas)
        row[f"delta_{m}_mean"] = mean
        row[f"delta_{m}_ci_low"] = low
        row[f"delta_{m}_ci_high"] = high
    return row


def head_to_head(results, method="sft", reference="translation"):
    """Rows per (dataset, loss) where both methods ran: the paired difference of
    ``method`` minus ``reference`` over the same seeds, with 95 % t intervals (SFT
    against translation, the baseline SFT claims to improve on)."""
    by_arm = runs_by_arm(results)
    rows = []
    for dataset, loss in sorted(
        {(d, l) for d, l, _ in by_arm}, key=lambda k: (k[0], loss_order(k[1]))
    ):
        runs = by_arm.get((dataset, loss, method))
        ref = by_arm.get((dataset, loss, reference))
        if runs and ref:
            row = dict(dataset=dataset, loss=loss, method=method, reference=reference)
            rows.append({**row, **paired_difference(runs, ref)})
    return rows


def head_to_head_table(rows):
    """Markdown: one line per (dataset, loss) of ``head_to_head``."""
    lines = [
        "| data set | loss | seeds | ΔR@1 [95 % CI] | ΔMAP@R [95 % CI] | R@1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['loss']} | {r['paired_seeds']} | "
            f"{format_delta(r, 'recall_at_1')} | "
            f"{format_delta(r, 'mean_average_precision_at_r')} | "
            f"{SFT_VERDICT.get(verdict(r), verdict(r))} |"
        )
    return "\n".join(lines)


def paired_summary(results):
    """Rows per (dataset, loss, method): means and stds over seeds, and for the
    methods the paired differences to the baseline of the same seeds, with 95 %
    t intervals. Only seeds with both runs, trained on the same data and CPU (see
    ``comparable``), count for a difference; ``unpaired_seeds`` counts the seeds
    whose two runs were not comparable."""
    by_arm = runs_by_arm(results)
    rows = []
    for (dataset, loss, method), by_seed in sorted(by_arm.items()):
        row = dict(dataset=dataset, loss=loss, method=method, seeds=len(by_seed))
        row["split"] = ",".join(
            sorted({r["config"]["split"] for r in by_seed.values()})
        )
        for m in PAIRED_METRICS:
            values = np.array([r["metrics"][m] for r in by_seed.values()])
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        baseline = by_arm.get((dataset, loss, "none"), {}) if method != "none" else {}
        row.update(paired_difference(by_seed, baseline))
        rows.append(row)
    methods = list(METHOD_NAMES)
    rows.sort(
        key=lambda r: (r["dataset"], loss_order(r["loss"]), methods.index(r["method"]))
    )
    return rows


def verdict(row):
    """'above', 'below' or 'no difference' from the paired interval."""
    low, high = row["delta_recall_at_1_ci_low"], row["delta_recall_at_1_ci_high"]
    if not np.isfinite(low):
        return "-"
    return "above" if low > 0 else "below" if high < 0 else "no difference"


def format_delta(row, metric):
    """A paired difference in points: "+1.23 [+0.45, +2.01]", "+1.23 (1 seed)" with
    one paired seed, "-" without any (or for the baseline)."""
    mean = row[f"delta_{metric}_mean"]
    if row.get("method") == "none" or not np.isfinite(mean):
        return "-"
    low, high = row[f"delta_{metric}_ci_low"], row[f"delta_{metric}_ci_high"]
    if not np.isfinite(low):  # one paired seed
        return f"{100 * mean:+.2f} (1 seed)"
    return f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def markdown(rows):
    header = (
        "| data set | loss | method | seeds | R@1 | MAP@R | ΔR@1 [95 % CI] | "
        "ΔMAP@R [95 % CI] | R@1 vs baseline |\n| --- | --- | --- | --- | --- | --- | "
        "--- | --- | --- |"
    )
    lines = [header]
    for r in rows:

        def cell(m):
            return f"{100 * r[f'{m}_mean']:.1f} ± {100 * r[f'{m}_std']:.1f}"

        lines.append(
            f"| {r['dataset']} | {r['loss']} | {METHOD_NAMES[r['method']]} | "
            f"{r['seeds']} | {cell('recall_at_1')} | "
            f"{cell('mean_average_precision_at_r')} | {format_delta(r, 'recall_at_1')} | "
            f"{format_delta(r, 'mean_average_precision_at_r')} | "
            f"{verdict(r) if r['method'] != 'none' else ''} |"
        )
    return "\n".join(lines)


def verdict_table(rows):
    """One line per (loss, method), one column per data set: the paired R@1
    difference and whether its interval lies above, below or around zero."""
    datasets = sorted({r["dataset"] for r in rows})
    cells = defaultdict(dict)
    for r in rows:
        if r["method"] != "none":
            mark = verdict(r)
            if np.isfinite(r["delta_recall_at_1_mean"]):
                mark = f"{100 * r['delta_recall_at_1_mean']:+.2f} ({mark})"
            cells[(r["loss"], r["method"])][r["dataset"]] = mark
    lines = [
        "| loss | method | " + " | ".join(datasets) + " |",
        "| --- | --- |" + " --- |" * len(datasets),
    ]
    for (loss, method), by_dataset in cells.items():
        lines.append(
            f"| {loss} | {METHOD_NAMES[method]} | "
            + " | ".join(by_dataset.get(d, "not run") for d in datasets)
            + " |"
        )
    return "\n".join(lines)


def plot_differences(rows, path):
    """The paired R@1 differences with their intervals, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["method"] != "none" and r["paired_seeds"] >= 2]
    datasets = sorted({r["dataset"] for r in rows})
    if not rows:
        return
    fig, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(5.5 * len(datasets), 0.35 * len(rows) + 1.5),
        squeeze=False,
    )
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        labels = [f"{r['loss']}: {METHOD_NAMES[r['method']]}" for r in mine]
        means = [100 * r["delta_recall_at_1_mean"] for r in mine]
        lows = [
            100 * (r["delta_recall_at_1_mean"] - r["delta_recall_at_1_ci_low"])
            for r in mine
        ]
        highs = [
            100 * (r["delta_recall_at_1_ci_high"] - r["delta_recall_at_1_mean"])
            for r in mine
        ]
        ys = np.arange(len(mine))[::-1]
        ax.errorbar(means, ys, xerr=[lows, highs], fmt="o", capsize=3)
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize="small")
        ax.set_xlabel("R@1 minus the baseline's, same seed (points; 95 % t interval)")
        seeds = sorted({r["paired_seeds"] for r in mine})
        ax.set_title(f"{dataset}, test classes ({'/'.join(map(str, seeds))} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser(description, split):
    """The comparison's command line: data sets, losses, seeds, workers, resuming,
    and every RunConfig field but those the comparison sets itself."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["emoji", "icons"], choices=("emoji", "icons")
    )
    parser.add_argument("--losses", nargs="+", default=list(FAMILY), choices=FAMILY)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--max-runs", type=int, default=None, help="train at most this many new runs"
    )
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="RUNS_CSV",
        help="runs.csv files of committed parts; their runs count as finished",
    )
    add_config_arguments(
        parser,
        exclude=("dataset", "loss", "method", "seed", "threads", "progress", "lr")
        + tuple(METHOD_OPTIONS),
    )
    parser.set_defaults(
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=64,
        train_from_block=15,
        epochs=20,
        eval_every=5,
        proxy_lr=0.1,
        split=split,
    )
    return parser


def base_options(args):
    """The RunConfig options every run of the comparison shares."""
    base = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if hasattr(args, f.name)
    }
    if not base.get("warmup_epochs"):  # the validated schedule, for every augmenter
        base["warmup_epochs"] = base["epochs"] / 2
        base["ramp_epochs"] = base["epochs"] / 4
    base["threads"] = 1 if args.workers > 1 else 0
    base["progress"] = args.workers <= 1
    return base


def finished_results(configs, out, reuse):
    """name -> result of the runs of ``configs`` already finished: committed rows
    (``reuse``), overridden by run directories under ``out``."""
    finished = committed_results(configs, reuse)
    for c in configs:
        result = run_dir_result(c, out)
        if result is not None:
            finished[c.name()] = result
    return finished


def partial_blocks_from_elsewhere(configs, finished, cpu):
    """Names of the finished runs to train again: those of every (data set, loss,
    seed) block that is incomplete and holds a run trained on another device than
    ``cpu`` (``device_description``: the CPU, or the GPU on CUDA). The block's missing runs, trained here, would not pair with those runs
    (``comparable``), so the whole block is trained again. Complete blocks and rows
    without a CPU stay as they are."""
    blocks = defaultdict(list)
    for c in configs:
        blocks[(c.dataset, c.loss, c.seed)].append(c.name())
    stale = []
    for names in blocks.values():
        done = [n for n in names if n in finished]
        if len(done) < len(names) and any(
            finished[n].get("cpu") not in (None, cpu) for n in done
        ):
            stale += done
    return stale


def set_aside(names, finished, out):
    """Removes ``names`` from ``finished``, moves their run directories (if any) to
    ``out/superseded/`` and adds their rows to ``out/superseded_runs.csv``."""
    path = out / "superseded_runs.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    rows += per_run_rows([finished.pop(n) for n in names])
    for name in names:
        run_dir = out / name
        if run_dir.exists():
            (out / "superseded").mkdir(exist_ok=True)
            run_dir.rename(out / "superseded" / name)
    write_csv(path, rows)


def train_missing(configs, finished, out, workers, limit=None):
    """Train the runs of ``configs`` not in ``finished`` (at most ``limit``) and add
    them to it; returns how many were trained."""
    todo = [c for c in configs if c.name() not in finished]
    if limit is not None:
        todo = todo[: max(limit, 0)]
    for result in run_all(todo, out, workers):
        finished[result["name"]] = result
    return len(todo)


def per_run_rows(results):
    return [
        {
            "name": r["name"],
            **{
                k: r["config"][k]
                for k in ("dataset", "loss", "method", "seed", "split")
            },
            **{m: r["metrics"][m] for m in PAIRED_METRICS},
            "train_seconds": r["train_seconds"],
            "commit": r.get("commit"),
            "data_fingerprint": r.get("data_fingerprint"),
            "cpu": r.get("cpu"),
        }
        for r in sorted(results, key=lambda r: r["name"])
    ]


def main(argv=None):
    parser = build_parser(__doc__.splitlines()[0], split="test")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    parser.add_argument("--out", default="runs/augmenter_comparison")
    parser.add_argument(
        "--chosen",
        default=None,
        metavar="CHOSEN_JSON",
        help="chosen.json of benchmarks.family_tuning: each loss's learning rate "
        "and each method's options, chosen on validation classes",
    )
    args = parser.parse_args(argv)
    base = base_options(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = json.loads(Path(args.chosen).read_text()) if args.chosen else None
    configs = family_configs(base, args.datasets, args.losses, args.seeds, chosen)
    finished = finished_results(configs, out, args.reuse)
    if args.max_runs != 0:
        here = device_description(base["device"])
        stale = partial_blocks_from_elsewhere(configs, finished, here)
        if stale:
            print(
                f"training again {len(stale)} finished runs of incomplete blocks "
                f"trained on another device than {here} (their rows go to "
                "superseded_runs.csv)",
                flush=True,
            )
            set_aside(stale, finished, out)
    started = time.time()
    trained = train_missing(configs, finished, out, args.workers, args.max_runs)
    results = [finished[c.name()] for c in configs if c.name() in finished]
    command = "python -m benchmarks.family " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    per_run = per_run_rows(results)
    write_csv(out / "runs.csv", per_run)
    rows = paired_summary(results)
    write_csv(out / "summary.csv", rows)
    plot_differences(rows, out / "paired_differences.png")
    contrast = head_to_head(results)
    write_csv(out / "sft_vs_translation.csv", contrast)
    remaining = len(configs) - len(results)
    header = [
        f"Command: `{command.strip()}`",
        f"Machine: {machine_description()}",
        f"Code: commit {git_commit()}",
        f"Wall time: {(time.time() - started) / 60:.1f} min for {trained} new runs; "
        f"{len(results)} of {len(configs)} runs finished"
        + (f" ({remaining} still to run)" if remaining else ""),
        "Test classes, final epoch; backbone "
        f"{base['backbone']} (pretrained {base['pretrained']}, trained from block "
        f"{base['train_from_block']}), {base['epochs']} epochs, schedule: no "
        f"augmentation for {base['warmup_epochs']} epochs, then a ramp over "
        f"{base['ramp_epochs']}.",
        (
            f"Learning rates and options: chosen on validation classes ({args.chosen})"
            if chosen
            else "Learning rates: LOSS_LR; options: each paper's defaults"
        ),
        "R@1 and MAP@R in %, mean ± std over seeds; Δ: the paired difference to the "
        "baseline of the same seeds, with a 95 % t interval over seeds.",
        "",
    ]
    (out / "summary.md").write_text(
        "# Feature augmentation family (paired seeds)\n\n"
        + "\n".join(header)
        + "\n"
        + markdown(rows)
        + "\n\n## ΔR@1 per data set (points; the verdict of its 95 % interval)\n\n"
        + verdict_table(rows)
        + "\n\n## SFT against translation (SFT minus translation, same seeds)\n\n"
        + head_to_head_table(contrast)
        + "\n"
    )
    (out / "command.json").write_text(
        json.dumps({"command": command, "machine": machine_description()})
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
