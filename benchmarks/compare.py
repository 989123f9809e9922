"""The main job: baseline vs +translation vs +SFT, several losses and seeds.

    python -m benchmarks.compare                 # the full default comparison
    python -m benchmarks.compare --quick         # a few minutes: 1 seed, 2 epochs
    python -m benchmarks.compare --preset ablation   # SFT options, validation classes

Each run trains on the training classes and is evaluated on classes never seen in
training (``--split val`` evaluates on held-out *training* classes instead, for
tuning). Finished runs are reused, so an interrupted comparison resumes. Results:
``<out>/runs.csv`` (one row per run), ``<out>/summary.csv`` and ``<out>/summary.md``
(mean +- std over seeds), ``<out>/recall_at_1.png`` and ``<out>/learning_curves.png``.
"""

import argparse
import csv
import dataclasses
import json
import multiprocessing
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .train import (
    LOSSES,
    METHODS,
    METRICS,
    RunConfig,
    add_config_arguments,
    cpu_description,
    git_commit,
    prepare_data,
    run,
    run_dir_result,
)

DEFAULT_LOSSES = ("contrastive", "multisimilarity", "triplet", "proxyanchor")

# SFT options varied one at a time around the defaults, evaluated on validation
# classes carved from the training classes (the from-scratch study of 2026-11).
ABLATIONS = {
    "default (batch centres, 1 target, weight 1)": {},
    "moving-average centres": {"centers": "ema"},
    "moving-average centres, targets from all classes": {
        "centers": "ema",
        "target_pool": "all",
    },
    "2 targets per sample": {"num_targets": 2},
    "aug_weight 0.5": {"aug_weight": 0.5},
    "warm-up 2 epochs": {"warmup_epochs": 2.0},
    "augmented samples only as partners": {"synthetic_role": "partner"},
    "augmented samples detached": {"detach_augmented": True},
}


def study_variants(epochs, loss):
    """The training methods of the feature-augmentation literature (issue 11), one
    at a time around the defaults; ``epochs`` sets the late start."""
    variants = {
        # augmenting from the first step (warmup_iterations=0), joint loss, any role
        "first step (joint loss, any role)": {},
        "detached synthetic samples": {"detach_augmented": True},
        "synthetic only as partners": {"synthetic_role": "partner"},
        "synthetic only as negatives": {"synthetic_role": "negative"},
        "separate term (w=1)": {"objective": "separate"},
        "separate term, negatives only": {
            "objective": "separate",
            "synthetic_role": "negative",
        },
        "late start (50%) + ramp (25%)": {
            "warmup_epochs": epochs / 2,
            "ramp_epochs": epochs / 4,
        },
        "targets: 5 nearest classes": {"nearest_targets": 5},
        "label-consistency filter": {"consistent_only": True},
        "centres: full pass every 2 epochs": {"centers": "dataset", "center_every": 2},
        "strength 0.5": {"strength": 0.5},
    }
    if loss in ("proxyanchor",):
        variants["centres: the loss's proxies, targets from all classes"] = {
            "centers": "proxies",
            "target_pool": "all",
        }
    return variants


METRIC_LABELS = {
    "recall_at_1": "R@1",
    "recall_at_2": "R@2",
    "recall_at_4": "R@4",
    "recall_at_8": "R@8",
    "mean_average_precision_at_r": "MAP@R",
    "NMI": "NMI",
}


def _run_job(job):
    cfg_dict, out = job
    cfg = RunConfig(**cfg_dict)
    started = time.time()
    result = run(cfg, out)
    return result, time.time() - started


def run_all(configs, out, workers):
    """The result of every config: finished runs are read here, the others are
    trained (in ``workers`` spawned processes, one per run, when workers > 1)."""
    results, jobs = [], []
    for c in configs:
        finished = run_dir_result(c, out)
        if finished is not None:
            results.append(finished)
        else:
            jobs.append((dataclasses.asdict(c), str(out)))
    if not jobs:
        return results
    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            result, seconds = _run_job(job)
            print(
                f"[{i}/{len(jobs)}] {result['name']}: R@1 {result['metrics']['recall_at_1']:.4f} ({seconds:.0f} s)",
                flush=True,
            )
            results.append(result)
        return results
    # fetch and cache each data set once here, not in every worker at the same time
    # (with progress bars: the first run of the main job spends minutes here)
    prepared = set()
    for cfg_dict, _ in jobs:
        if cfg_dict["dataset"] not in prepared:
            start = time.time()
            print(f"preparing {cfg_dict['dataset']}: fetch, render, cache", flush=True)
            prepare_data(RunConfig(**{**cfg_dict, "progress": True}))
            print(f"data ready in {time.time() - start:.0f} s", flush=True)
            prepared.add(cfg_dict["dataset"])
    print(f"training {len(jobs)} runs on {workers} workers", flush=True)
    context = multiprocessing.get_context("spawn")
    start, seconds_done = time.time(), []
    with context.Pool(workers, maxtasksperchild=1) as pool:
        for i, (result, seconds) in enumerate(pool.imap_unordered(_run_job, jobs), 1):
            seconds_done.append(seconds)
            left = (len(jobs) - i) * sum(seconds_done) / len(seconds_done) / workers
            print(
                f"[{i}/{len(jobs)}] {result['name']}: R@1 "
                f"{result['metrics']['recall_at_1']:.4f} ({seconds:.0f} s; "
                f"{time.time() - start:.0f} s so far, about {left / 60:.0f} min left)",
                flush=True,
            )
            results.append(result)
    return results


def group_key(result, keys):
    return tuple(result["config"][k] for k in keys)


def best_epoch_metrics(result):
    """The metrics at the epoch with the best Recall@1 (model selection on the
    validation classes; only for runs evaluated on them)."""
    curves = result["curves"]
    scored = [(r, i) for i, r in enumerate(curves["recall_at_1"]) if r is not None]
    best = max(scored)[1]
    return {m: curves[m][best] for m in METRICS}, curves["epoch"][best]


def summarize(results, group_keys):
    """Mean and std (over seeds) of every metric, per group."""
    groups = defaultdict(list)
    for r in results:
        groups[group_key(r, group_keys)].append(r)
    rows = []
    for key, members in groups.items():
        row = dict(zip(group_keys, key))
        # the classes evaluated on: "val" (held-out training classes) or "test"
        row["split"] = ",".join(sorted({m["config"]["split"] for m in members}))
        row["seeds"] = len(members)
        for m in METRICS:
            values = np.array([r["metrics"][m] for r in members], dtype=float)
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["train_minutes_mean"] = float(
            np.mean([r["train_seconds"] for r in members]) / 60
        )
        rows.append(row)
    return rows


def write_csv(path, rows):
    if not rows:
        return
    keys = list(rows[0].keys())
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows, label_keys):
    header = [*label_keys, "seeds", *METRIC_LABELS.values()]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for row in rows:
        cells = [str(row[k]) for k in label_keys] + [str(row["seeds"])]
        cells += [
            (
                f"{100 * row[f'{m}_mean']:.1f}"  # one seed: no spread to show
                if row["seeds"] == 1
                else f"{100 * row[f'{m}_mean']:.1f} ± {100 * row[f'{m}_std']:.1f}"
            )
            for m in METRICS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_recall(rows, path, losses, methods):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(losses), 3.6))
    width = 0.8 / len(methods)
    index = {(r["loss"], r["method"]): r for r in rows}
    for j, method in enumerate(methods):
        xs, means, stds = [], [], []
        for i, loss in enumerate(losses):
            if (loss, method) in index:
                r = index[(loss, method)]
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                means.append(100 * r["recall_at_1_mean"])
                stds.append(100 * r["recall_at_1_std"])
        one_seed = all(r["seeds"] == 1 for r in rows)
        yerr = None if one_seed else stds
        ax.bar(xs, means, width, yerr=yerr, capsize=3, label=method)
    ax.set_xticks(range(len(losses)))
    ax.set_xticklabels(losses)
    ax.set_ylabel("Recall@1 (%) on unseen classes")
    lows = [100 * r["recall_at_1_mean"] for r in rows]
    if lows:
        ax.set_ylim(max(0, min(lows) - 10), min(100, max(lows) + 5))
    ax.legend(title="augmentation")
    if all(r["seeds"] == 1 for r in rows):
        ax.set_title("one seed: no error bars (about 1 point is within seed noise)")
    else:
        ax.set_title("mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results, path, losses, series):
    """Mean Recall@1 per evaluated epoch, one panel per loss and one line per
    ``series(result)`` label (the method, or the study's variant and method); the
    plotted values also go to a CSV file next to the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(losses), figsize=(3.4 * len(losses), 3.2), squeeze=False
    )
    rows = []
    for ax, loss in zip(axes[0], losses):
        groups = {}
        for r in results:
            if r["config"]["loss"] == loss:
                groups.setdefault(series(r), []).append(r)
        for line, (label, members) in enumerate(groups.items()):
            epochs = members[0]["curves"]["epoch"]
            points = [
                (e, np.mean([m["curves"]["recall_at_1"][i] for m in members]))
                for i, e in enumerate(epochs)
                if members[0]["curves"]["recall_at_1"][i] is not None
            ]
            style = ("-", "--", ":")[line // 10 % 3]  # the colour cycle has 10
            ax.plot(*zip(*points), marker="o", linestyle=style, label=label)
            rows += [
                {"loss": loss, "series": label, "epoch": e, "recall_at_1_mean": v}
                for e, v in points
            ]
        ax.set_title(loss)
        ax.set_xlabel("epoch")
        ax.set_ylabel("Recall@1")
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_csv(Path(path).with_suffix(".csv"), rows)


def machine_description():
    import torch

    return (
        f"{platform.platform()}, {multiprocessing.cpu_count()} CPU cores "
        f"({cpu_description()}), Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--losses", nargs="+", default=list(DEFAULT_LOSSES), choices=LOSSES
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["none", "translation", "sft"],
        choices=METHODS,
        help="the family: python -m benchmarks.family",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--preset", choices=("comparison", "ablation", "study"), default="comparison"
    )
    parser.add_argument("--ablation-loss", default="multisimilarity", choices=LOSSES)
    parser.add_argument(
        "--study-losses", nargs="+", default=["multisimilarity"], choices=LOSSES
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="study: only the variants whose label starts with one of these",
    )
    parser.add_argument(
        "--select",
        choices=("final", "best-epoch"),
        default="final",
        help="report the final epoch, or the epoch with the best Recall@1 (only "
        "on validation classes)",
    )
    parser.add_argument(
        "--loss-lr",
        nargs="+",
        default=[],
        metavar="LOSS=LR",
        help="learning rate per loss (tuned on validation classes), e.g. "
        "multisimilarity=3e-3; the others use --lr",
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--out", default=None, help="results folder")
    add_config_arguments(
        parser, exclude=("loss", "method", "seed", "threads", "progress")
    )
    args = parser.parse_args(argv)
    base = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if hasattr(args, f.name)
    }
    base["threads"] = 1 if args.workers > 1 else 0
    base["progress"] = args.workers <= 1
    if args.quick:
        args.seeds = args.seeds[:1]
        base["epochs"] = 2
        base["eval_every"] = 1
    loss_lr = {}
    for item in args.loss_lr:
        name, _, value = item.partition("=")
        if name not in LOSSES or not value:
            parser.error(f"--loss-lr takes LOSS=LR with LOSS in {LOSSES}, got {item!r}")
        loss_lr[name] = float(value)
    out = Path(args.out or ("runs/quick" if args.quick else f"runs/{args.preset}"))
    out.mkdir(parents=True, exist_ok=True)

    configs, labels = [], {}
    if args.preset == "ablation":
        base["split"] = "val"
        for seed in args.seeds:
            configs.append(
                RunConfig(**base, loss=args.ablation_loss, method="none", seed=seed)
            )
            labels[configs[-1].name()] = "baseline (no augmentation)"
            for label, options in ABLATIONS.items():
                cfg = RunConfig(
                    **{**base, **options},
                    loss=args.ablation_loss,
                    method="sft",
                    seed=seed,
                )
                configs.append(cfg)
                labels[cfg.name()] = label
    elif args.preset == "study":
        base["split"] = "val"
        for loss in args.study_losses:
            variants = study_variants(base["epochs"], loss)
            if args.variants:
                variants = {
                    k: v
                    for k, v in variants.items()
                    if k.startswith(tuple(args.variants))
                }
            for seed in args.seeds:
                cfg = RunConfig(**base, loss=loss, method="none", seed=seed)
                configs.append(cfg)
                labels[cfg.name()] = "baseline (no augmentation)"
                for label, options in variants.items():
                    for method in args.methods:
                        if method == "none":
                            continue
                        cfg = RunConfig(
                            **{**base, **options}, loss=loss, method=method, seed=seed
                        )
                        configs.append(cfg)
                        labels[cfg.name()] = label
    else:
        for loss in args.losses:
            for method in args.methods:
                for seed in args.seeds:
                    options = {**base, "lr": loss_lr.get(loss, base["lr"])}
                    configs.append(
                        RunConfig(**options, loss=loss, method=method, seed=seed)
                    )

    if args.select == "best-epoch" and base["split"] != "val":
        parser.error(
            "--select best-epoch selects on validation classes: use --split val"
        )
    started = time.time()
    results = run_all(configs, out, args.workers)
    results.sort(key=lambda r: r["name"])
    if args.select == "best-epoch":
        for r in results:
            r["metrics"], r["best_epoch"] = best_epoch_metrics(r)
    per_run = [
        {
            "name": r["name"],
            **{k: r["config"][k] for k in ("loss", "method", "seed", "split")},
            **r["metrics"],
            "best_epoch": r.get("best_epoch"),
            "train_seconds": r["train_seconds"],
        }
        for r in results
    ]
    write_csv(out / "runs.csv", per_run)
    command = "python -m benchmarks.compare " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    header = [
        f"Command: `{command.strip()}`",
        f"Machine: {machine_description()}",
        f"Code: commit {git_commit()}; runs trained at "
        + ", ".join(
            f"{commit} ({count})"
            for commit, count in Counter(
                r.get("commit", "an earlier commit (not recorded)") for r in results
            ).items()
        ),
        f"Wall time: {(time.time() - started) / 60:.1f} min for {len(results)} runs "
        f"(finished runs are reused)",
        f"Data: {base['dataset']}, evaluated on the {base['split']} classes "
        f"({results[0]['num_eval_classes']} classes, {results[0]['num_eval_samples']} images); "
        f"{results[0]['num_train_classes']} training classes; "
        f"{base['epochs']} epochs, batch {base['batch_size']} ({base['m_per_class']} per class), "
        f"backbone {base['backbone']}, embedding {base['embedding_size']}.",
        "Metrics in %, mean ± std over seeds (sample std)"
        + (
            ", each run at its best validation epoch (Recall@1)."
            if args.select == "best-epoch"
            else ", final epoch."
        ),
        "",
    ]
    if args.preset == "ablation":
        for r in results:
            r["config"]["variant"] = labels[r["name"]]
        rows = summarize(results, ["variant"])
        order = ["baseline (no augmentation)", *ABLATIONS]
        rows.sort(key=lambda row: order.index(row["variant"]))
        table = markdown_table(rows, ["variant"])
        title = f"# SFT ablation ({args.ablation_loss}, validation classes)\n"
    elif args.preset == "study":
        for r in results:
            r["config"]["variant"] = labels[r["name"]]
        rows = summarize(results, ["loss", "variant", "method"])
        order = ["baseline (no augmentation)"]
        for loss in args.study_losses:
            order += [v for v in study_variants(base["epochs"], loss) if v not in order]
        rows.sort(
            key=lambda row: (
                args.study_losses.index(row["loss"]),
                order.index(row["variant"]),
                row["method"],
            )
        )
        table = markdown_table(rows, ["loss", "variant", "method"])
        title = "# Feature-augmentation study (validation classes)\n"
        results.sort(key=lambda r: (order.index(r["config"]["variant"]), r["name"]))
        plot_curves(
            results,
            out / "learning_curves.png",
            args.study_losses,
            lambda r: r["config"]["variant"]
            + (
                "" if r["config"]["method"] == "none" else f" ({r['config']['method']})"
            ),
        )
    else:
        rows = summarize(results, ["loss", "method"])
        rows.sort(
            key=lambda row: (
                args.losses.index(row["loss"]),
                args.methods.index(row["method"]),
            )
        )
        table = markdown_table(rows, ["loss", "method"])
        title = "# Baseline vs +translation vs +SFT\n"
        plot_recall(rows, out / "recall_at_1.png", args.losses, args.methods)
        results.sort(key=lambda r: args.methods.index(r["config"]["method"]))
        plot_curves(
            results,
            out / "learning_curves.png",
            args.losses,
            lambda r: r["config"]["method"],
        )
    write_csv(out / "summary.csv", rows)
    (out / "summary.md").write_text(
        title + "\n" + "\n".join(header) + "\n" + table + "\n"
    )
    (out / "command.json").write_text(
        json.dumps({"command": command, "machine": machine_description()})
    )
    print(title + "\n" + table)


if __name__ == "__main__":
    main()
