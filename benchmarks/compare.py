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
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

from . import registry, report
from .train import (
    LOSSES,
    METHODS,
    METRICS,
    RunConfig,
    add_config_arguments,
    prepare_data,
    run,
    run_dir_result,
    settings_from_args,
)

OPTIONS = registry.method_options()
FIELDS = {f.name for f in dataclasses.fields(RunConfig)}

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
    unique = {c.name(): c for c in configs}  # a run listed twice is trained once
    for c in unique.values():
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
    # no progress bars from the workers (PML's trainer draws one per epoch); tqdm
    # reads TQDM_DISABLE when it is imported, so the spawned workers see it
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # every worker, also those started later
    context = multiprocessing.get_context("spawn")
    start, seconds_done = time.time(), []
    try:
        with context.Pool(workers, maxtasksperchild=1) as pool:
            for i, (result, seconds) in enumerate(
                pool.imap_unordered(_run_job, jobs), 1
            ):
                seconds_done.append(seconds)
                left = (len(jobs) - i) * sum(seconds_done) / len(seconds_done)
                print(
                    f"[{i}/{len(jobs)}] {result['name']}: R@1 "
                    f"{result['metrics']['recall_at_1']:.4f} ({seconds:.0f} s; "
                    f"{time.time() - start:.0f} s so far, about "
                    f"{left / workers / 60:.0f} min left)",
                    flush=True,
                )
                results.append(result)
    finally:  # this process keeps its own environment
        if before is None:
            os.environ.pop("TQDM_DISABLE")
        else:
            os.environ["TQDM_DISABLE"] = before
    return results


def best_epoch_metrics(result):
    """The metrics at the run's best validation epoch (Recall@1, as PML's
    HookContainer chose it; only for runs evaluated on validation classes)."""
    curves, best = result["curves"], result["best_epoch"]
    return {m: curves[m][curves["epoch"].index(best)] for m in METRICS}, best


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--losses", nargs="+", default=list(DEFAULT_LOSSES), choices=LOSSES)
    add(
        "--methods",
        nargs="+",
        default=["none", "translation", "sft"],
        choices=METHODS,
        help="the family: python -m benchmarks.family",
    )
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--preset", choices=("comparison", "ablation", "study"), default="comparison")
    add("--ablation-loss", default="multisimilarity", choices=LOSSES)
    add("--study-losses", nargs="+", default=["multisimilarity"], choices=LOSSES)
    add(
        "--variants",
        nargs="+",
        default=None,
        help="study: only the variants whose label starts with one of these",
    )
    add(
        "--select",
        choices=("final", "best-epoch"),
        default="final",
        help="report the final epoch, or the epoch with the best Recall@1 (only "
        "on validation classes)",
    )
    add(
        "--loss-lr",
        nargs="+",
        default=[],
        metavar="LOSS=LR",
        help="learning rate per loss (tuned on validation classes), e.g. "
        "multisimilarity=3e-3; the others use --lr",
    )
    add("--quick", action="store_true", help="1 seed, 2 epochs")
    add("--workers", type=int, default=2, help="runs in parallel")
    add("--out", default=None, help="results folder")
    return add_config_arguments(
        parser, exclude=("loss", "method", "seed", "threads", "progress")
    )


def base_settings(args, parser):
    """(the settings every run shares, the learning rate per loss)."""
    methods = ["sft"] if args.preset == "ablation" else args.methods
    base = {
        k: v
        for k, v in settings_from_args(args, parser, methods).items()
        if k in FIELDS or k in OPTIONS
    }
    base["threads"] = 1 if args.workers > 1 else 0
    base["progress"] = args.workers <= 1
    if args.quick:
        args.seeds = args.seeds[:1]
        base.update(epochs=2, eval_every=1)
    if args.preset != "comparison":
        base["split"] = "val"
    if args.select == "best-epoch" and base["split"] != "val":
        parser.error(
            "--select best-epoch selects on validation classes: use --split val"
        )
    loss_lr = {}
    for item in args.loss_lr:
        name, _, value = item.partition("=")
        if name not in LOSSES or not value:
            parser.error(f"--loss-lr takes LOSS=LR with LOSS in {LOSSES}, got {item!r}")
        loss_lr[name] = float(value)
    return base, loss_lr


BASELINE = "baseline (no augmentation)"


def preset_configs(args, base, loss_lr):
    """(configs, run name -> variant label) of the preset."""
    configs, labels = [], {}

    def add(label, **settings):
        own = registry.METHODS[settings["method"]].options
        if any(k not in FIELDS and k not in own for k in settings):
            return  # a study variant whose options the method does not take
        configs.append(RunConfig.make(**{**base, **settings}))
        labels[configs[-1].name()] = label

    if args.preset == "comparison":
        for loss in args.losses:
            for method in args.methods:
                for seed in args.seeds:
                    lr = loss_lr.get(loss, base["lr"])
                    add(method, loss=loss, method=method, seed=seed, lr=lr)
        return configs, labels
    if args.preset == "ablation":
        variants = {args.ablation_loss: ABLATIONS}
        methods = ["sft"]
    else:
        variants = {
            loss: {
                k: v
                for k, v in study_variants(base["epochs"], loss).items()
                if not args.variants or k.startswith(tuple(args.variants))
            }
            for loss in args.study_losses
        }
        methods = [m for m in args.methods if m != "none"]
    for loss, options in variants.items():
        for seed in args.seeds:
            add(BASELINE, loss=loss, method="none", seed=seed)
            for label, option in options.items():
                for method in methods:
                    add(label, **option, loss=loss, method=method, seed=seed)
    return configs, labels


def variant_order(args, base):
    if args.preset == "ablation":
        return [BASELINE, *ABLATIONS]
    order = [BASELINE]
    for loss in args.study_losses:
        order += [v for v in study_variants(base["epochs"], loss) if v not in order]
    return order


def tables(args, base, runs, results, out):
    """(title, summary rows, markdown table) of the preset; writes its plots."""
    if args.preset == "comparison":
        keys, orders = ["loss", "method"], {"loss": args.losses, "method": args.methods}
        title = "Baseline vs +translation vs +SFT"
    else:
        keys = (
            ["variant"] if args.preset == "ablation" else ["loss", "variant", "method"]
        )
        orders = {"loss": args.study_losses, "variant": variant_order(args, base)}
        title = (
            f"SFT ablation ({args.ablation_loss}, validation classes)"
            if args.preset == "ablation"
            else "Feature-augmentation study (validation classes)"
        )
    rows = report.summary(runs, keys).sort_values(
        keys, key=lambda c: c.map(orders[c.name].index) if c.name in orders else c
    )
    table = report.markdown(rows, report.metric_columns(keys))
    if args.preset == "comparison":
        report.plot_recall(rows, out / "recall_at_1.png", args.losses, args.methods)
        results.sort(key=lambda r: args.methods.index(r["config"]["method"]))
        report.plot_curves(
            results,
            out / "learning_curves.png",
            args.losses,
            lambda r: r["config"]["method"],
        )
    elif args.preset == "study":
        order = orders["variant"]
        results.sort(key=lambda r: (order.index(r["config"]["variant"]), r["name"]))
        report.plot_curves(
            results,
            out / "learning_curves.png",
            args.study_losses,
            lambda r: r["config"]["variant"]
            + (
                "" if r["config"]["method"] == "none" else f" ({r['config']['method']})"
            ),
        )
    return title, rows, table


def header(args, base, results, command, started):
    first = results[0]
    return report.header(
        command,
        f"{(time.time() - started) / 60:.1f} min for {len(results)} runs "
        "(finished runs are reused)",
        results,
        [
            f"Data: {base['dataset']}, evaluated on the {base['split']} classes "
            f"({first['num_eval_classes']} classes, {first['num_eval_samples']} "
            f"images); {first['num_train_classes']} training classes; "
            f"{base['epochs']} epochs, batch {base['batch_size']} "
            f"({base['m_per_class']} per class), backbone {base['backbone']}, "
            f"embedding {base['embedding_size']}.",
            "Metrics in %, mean ± std over seeds (sample std)"
            + (
                ", each run at its best validation epoch (Recall@1)."
                if args.select == "best-epoch"
                else ", final epoch."
            ),
        ],
    )


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    base, loss_lr = base_settings(args, parser)
    out = Path(args.out or ("runs/quick" if args.quick else f"runs/{args.preset}"))
    out.mkdir(parents=True, exist_ok=True)
    configs, labels = preset_configs(args, base, loss_lr)
    started = time.time()
    results = sorted(run_all(configs, out, args.workers), key=lambda r: r["name"])
    for r in results:
        r["config"]["variant"] = labels[r["name"]]
        if args.select == "best-epoch":
            r["metrics"], r["best_epoch"] = best_epoch_metrics(r)
    extra = () if args.preset == "comparison" else ("variant",)
    runs = report.runs_frame(results, METRICS, extra=extra)
    report.write_csv(out / "runs.csv", runs)
    command = "python -m benchmarks.compare " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    title, rows, table = tables(args, base, runs, results, out)
    report.write_csv(out / "summary.csv", rows)
    head = header(args, base, results, command, started)
    report.write_summary(out / "summary.md", title, head, table)
    (out / "command.json").write_text(
        json.dumps({"command": command, "machine": report.machine_description()})
    )
    print(f"# {title}\n\n{table}")


if __name__ == "__main__":
    main()
