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
go to superseded_runs.csv). Every run uses one thread, whatever ``--workers``: the
thread count changes the numbers (an icons baseline: R@1 0.2140 with one thread,
0.2189 with two). ``--methods`` runs only those methods and the baseline.

Results in ``--out``: runs.csv (one row per run), summary.csv (per data set, loss
and method: means and stds over seeds, and the paired difference to the baseline
with a 95 % t interval over seeds), sft_vs_peers.csv (SFT minus each of its peers,
translation, Spherical Embedding Expansion and class-covariance sampling, per data
set and loss where both ran, paired the same way), summary.md and
paired_differences.png.
"""

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import registry, report
from .compare import run_all
from .train import (
    RunConfig,
    add_config_arguments,
    device_description,
    run_dir_result,
)

# loss -> the methods compared on it (besides the baseline, "none")
FAMILY = {loss: registry.family_methods(loss) for loss in registry.FAMILY_LOSSES}
METHOD_NAMES = {name: method.label for name, method in registry.METHODS.items()}
PAIRED_METRICS = report.PAIRED_METRICS
SFT_VERDICT = {"above": "SFT higher", "below": "SFT lower"}
# the methods SFT is compared with head to head: translation (the transfer SFT
# replaces), and the spherical and the covariance peer
PEERS = ("translation", "see", "cov")
LOSS_LR = {name: loss.lr for name, loss in registry.LOSSES.items()}


def compared_methods(loss, methods=None):
    """The methods compared on ``loss`` (FAMILY's), only those of ``methods`` when
    given (the baseline always runs)."""
    return tuple(m for m in FAMILY[loss] if methods is None or m in methods)


def family_configs(
    base, datasets, losses, seeds, chosen=None, methods=None, untuned="refuse"
):
    """Every run of the comparison, seed-major (a partial run holds whole pairs
    first); ``methods``: only these besides the baseline. ``chosen``
    (benchmarks.family_tuning's chosen.json) gives, per data set, loss and method,
    the learning rate and options chosen on validation classes; without it each
    loss takes LOSS_LR and each method its paper's defaults. A method ``chosen``
    has no entry for is refused (``untuned="refuse"``) or left out ("skip", for a
    report of what is finished)."""
    configs = []
    for seed in seeds:
        for dataset in datasets:
            for loss in losses:
                for method in ("none", *compared_methods(loss, methods)):
                    if chosen is None:
                        options = {"lr": LOSS_LR.get(loss, RunConfig().lr)}
                    elif method in chosen.get(dataset, {}).get(loss, {}):
                        options = chosen[dataset][loss][method]
                    elif untuned == "skip":
                        continue
                    else:
                        raise ValueError(
                            f"the chosen settings have no entry for {dataset}, "
                            f"{loss}, {method}: finish its tuning first (a report "
                            "of what is finished: --max-runs 0 leaves it out)"
                        )
                    configs.append(
                        RunConfig.make(
                            **{**base, **options},
                            dataset=dataset,
                            loss=loss,
                            method=method,
                            seed=seed,
                        )
                    )
    return configs


# How runs were named before they were keyed by their whole configuration
# (benchmarks/train.py up to d309b7c): the fields below, each where it differed from
# its default then; every field the old name left out had to be at its old default.
LEGACY_METHODS = ("none", "translation", "sft", "ee", "ss", "ps")
LEGACY_METHOD_FIELDS = {
    "centers": "batch",
    "center_every": 1,
    "num_targets": 1,
    "target_pool": "batch",
    "nearest_targets": 0,
    "strength": 1.0,
    "consistent_only": False,
    "aug_weight": 1.0,
    "objective": "joint",
    "warmup_epochs": 0.0,
    "ramp_epochs": 0.0,
    "start": "epochs",
    "synthetic_role": "any",
    "detach_augmented": False,
    "num_points": 2,
    "ps_alpha": 0.4,
    "ps_mu": 1.0,
}
LEGACY_RUN_FIELDS = {
    "backbone": "small_cnn",
    "pretrained": False,
    "freeze_bn": False,
    "trunk_lr": 0.0,
    "train_from_block": 0,
    "cached_copies": 4,
    "epochs": 6,
    "lr": 1e-3,
    "proxy_lr": 1e-1,
    "image_size": 32,
    "m_per_class": 4,
}
LEGACY_FIXED = {  # not in the old name: the comparison's value then
    "max_classes": 0,
    "val_fraction": 0.2,
    "width": 32,
    "embedding_size": 128,
    "batch_size": 128,
    "weight_decay": 1e-4,
    "eval_every": 5,
    "eval_batch_size": 512,
    "device": "cpu",
    "num_workers": 0,
    "ema_momentum": 0.9,
}


def legacy_name(config):
    """The name the harness before run keys (up to d309b7c) gave the run of
    ``config``, or None where that harness could not have run it (a method it did
    not have, or a field its name did not record away from the value it had then).
    A committed row under this name is the run of ``config`` trained by the code
    of the commit the row names."""
    if config.method not in LEGACY_METHODS:
        return None
    fields = {**dataclasses.asdict(config), **config.method_options()}
    fields["start"] = "epochs"
    if any(fields.get(k, v) != v for k, v in LEGACY_FIXED.items()):
        return None
    parts = [config.dataset, config.loss, config.method]
    if config.method != "none":
        parts += [
            f"{k}={fields[k]}"
            for k, default in LEGACY_METHOD_FIELDS.items()
            if fields.get(k, default) != default
        ]
    parts += [
        f"{k}={fields[k]}"
        for k, default in LEGACY_RUN_FIELDS.items()
        if fields[k] != default
    ]
    parts += [f"split={config.split}", f"seed={config.seed}"]
    return "_".join(str(p) for p in parts)


def committed_results(configs, paths, warn=True):
    """Results of finished runs read back from committed runs.csv files: the rows
    whose run name is one of ``configs``' (a row carries the metrics the summary
    needs, the training time and the commit that trained it). Rows written before
    runs were keyed by their whole configuration are found by their old name
    (:func:`legacy_name`) and come back under the new one, with their commit."""
    by_name = {c.name(): c for c in configs}
    old_names = {}
    for c in configs:
        old = legacy_name(c)
        if old is not None:
            old_names.setdefault(old, c)
    results = {}
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        taken = 0
        for row in rows:
            config = by_name.get(row["name"])  # the name ends with the key
            if config is None and row.get("commit"):
                # an old name says less than a key: only rows of the family
                # comparison and its tuning, which record their commit, are taken
                config = old_names.get(row["name"])
            if config is None:
                continue
            taken += 1
            results[config.name()] = {
                "name": config.name(),
                "config": dataclasses.asdict(config),
                "metrics": {m: float(row[m]) for m in PAIRED_METRICS},
                "train_seconds": float(row["train_seconds"]),
                "commit": row.get("commit") or None,
                "data_fingerprint": row.get("data_fingerprint") or None,
                "cpu": row.get("cpu") or None,
            }
        if warn and rows and configs and not taken:
            warnings.warn(
                f"none of the {len(rows)} rows of {path} is a run of this comparison, "
                "by its name or by the name the harness gave it before runs were "
                "keyed by their whole configuration (legacy_name; such rows are "
                "taken only with the commit that trained them)"
            )
    return results


def loss_order(loss):
    """The position of ``loss`` in FAMILY (unknown losses last), for sorting."""
    return list(FAMILY).index(loss) if loss in FAMILY else 99


def head_to_head_table(rows):
    """Markdown: one line per (peer, dataset, loss) of :func:`head_to_head`."""
    return report.markdown(
        rows,
        {
            "peer": lambda r: METHOD_NAMES[r["reference"]],
            "data set": "dataset",
            "loss": "loss",
            "seeds": "paired_seeds",
            "ΔR@1 [95 % CI]": lambda r: report.format_delta(r, "recall_at_1"),
            "ΔMAP@R [95 % CI]": lambda r: report.format_delta(
                r, "mean_average_precision_at_r"
            ),
            "R@1": lambda r: SFT_VERDICT.get(report.verdict(r), report.verdict(r)),
        },
    )


def markdown(rows):
    """Markdown: one line per (dataset, loss, method) of ``report.paired_summary``."""
    return report.markdown(
        rows,
        {
            "data set": "dataset",
            "loss": "loss",
            "method": lambda r: METHOD_NAMES[r["method"]],
            "seeds": "seeds",
            "R@1": lambda r: report.mean_std({**r, "seeds": 2}, "recall_at_1"),
            "MAP@R": lambda r: report.mean_std(
                {**r, "seeds": 2}, "mean_average_precision_at_r"
            ),
            "ΔR@1 [95 % CI]": lambda r: report.format_delta(r, "recall_at_1"),
            "ΔMAP@R [95 % CI]": lambda r: report.format_delta(
                r, "mean_average_precision_at_r"
            ),
            "R@1 vs baseline": lambda r: (
                report.verdict(r) if r["method"] != "none" else ""
            ),
        },
    )


def verdict_table(rows):
    """One line per (loss, method), one column per data set: the paired R@1
    difference and whether its interval lies above, below or around zero."""
    rows = report._records(rows)
    datasets = sorted({r["dataset"] for r in rows})
    rows = [r for r in rows if r["method"] != "none"]
    cells = {}
    for r in rows:
        mark = report.verdict(r)
        if np.isfinite(r["delta_recall_at_1_mean"]):
            mark = f"{100 * r['delta_recall_at_1_mean']:+.2f} ({mark})"
        cells.setdefault((r["loss"], r["method"]), {})[r["dataset"]] = mark
    table = [
        {"loss": loss, "method": METHOD_NAMES[method], **by_dataset}
        for (loss, method), by_dataset in cells.items()
    ]
    columns = {"loss": "loss", "method": "method"}
    columns.update({d: (lambda r, d=d: r.get(d, "not run")) for d in datasets})
    return report.markdown(table, columns)


def paired_summary(results):
    """``report.paired_summary`` of results, in FAMILY's and METHOD_NAMES' order."""
    frame = report.runs_frame(results)
    return report.paired_summary(frame, list(METHOD_NAMES), list(FAMILY)).to_dict(
        "records"
    )


def head_to_head(results, method="sft", references=PEERS):
    """``method`` minus each of ``references``, per data set and loss where both
    ran, paired by seed (``report.head_to_head``), the references in turn."""
    frame = report.runs_frame(results)
    rows = []
    for reference in references:
        rows += report.head_to_head(frame, list(FAMILY), method, reference).to_dict(
            "records"
        )
    return rows


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
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=[m for m in METHOD_NAMES if m != "none"],
        help="only these methods (on the losses they are compared on) and the "
        "baseline; default: every method",
    )
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
        + tuple(registry.method_options()),
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
    # one thread per run, with any number of workers: a run's numbers depend on its
    # thread count (an icons baseline, R@1 0.2140 with one, 0.2189 with two), and
    # the committed rows trained with one
    base["threads"] = 1
    base["progress"] = args.workers <= 1
    return base


def finished_results(configs, out, reuse, warn=True):
    """name -> result of the runs of ``configs`` already finished: committed rows
    (``reuse``; ``warn``: about a file none of whose rows is one of them),
    overridden by run directories under ``out``."""
    finished = committed_results(configs, reuse, warn)
    for c in configs:
        result = run_dir_result(c, out)
        if result is not None:
            finished[c.name()] = result
    return finished


def partial_blocks_from_elsewhere(configs, finished, cpu):
    """Names of the finished runs to train again: in every (data set, loss, seed)
    block of ``configs`` that is incomplete, the runs trained on another device than
    ``cpu`` (``device_description``: the CPU, or the GPU on CUDA). The block's
    missing runs, trained here, would not pair with them, so they are trained here
    too and the block ends up trained on one device; its runs trained here stay.
    Complete blocks and rows without a CPU (from before f103468, 2026-12-02 15:37)
    stay as they are."""
    blocks = defaultdict(list)
    for c in configs:
        blocks[(c.dataset, c.loss, c.seed)].append(c.name())
    stale = []
    for names in blocks.values():
        done = [n for n in names if n in finished]
        if len(done) < len(names):
            stale += [n for n in done if finished[n].get("cpu") not in (None, cpu)]
    return stale


def set_aside(names, finished, out):
    """Removes ``names`` from ``finished``, moves their run directories (if any) to
    ``out/superseded/`` (replacing one set aside before) and adds their rows to
    ``out/superseded_runs.csv`` (once: a committed row read again by a later call
    is not added twice)."""
    path = out / "superseded_runs.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    new = per_run_rows([finished.pop(n) for n in names]).to_dict("records")

    def key(row):
        commit = row.get("commit")
        return row["name"], commit if isinstance(commit, str) else ""

    seen = {key(r) for r in rows}
    rows += [r for r in new if key(r) not in seen]
    for name in names:
        run_dir = out / name
        if run_dir.exists():
            target = out / "superseded" / name
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            run_dir.rename(target)
    report.write_csv(path, rows)


def train_missing(configs, finished, out, workers, limit=None):
    """Train the runs of ``configs`` not in ``finished`` (at most ``limit``) and add
    them to it; returns how many were trained."""
    todo = [c for c in configs if c.name() not in finished]
    if limit is not None:
        todo = todo[: max(limit, 0)]
    for result in run_all(todo, out, workers) if todo else []:
        finished[result["name"]] = result
    return len(todo)


def per_run_rows(results):
    return report.runs_frame(results)


def write_reports(out, results, total, trained, base, args, command, started):
    """runs.csv, summary.csv, sft_vs_peers.csv, paired_differences.png,
    summary.md and command.json of the comparison in ``out``; returns the rows."""
    chosen = args.chosen
    report.write_csv(out / "runs.csv", per_run_rows(results))
    rows = paired_summary(results)
    report.write_csv(out / "summary.csv", rows)
    report.plot_differences(rows, out / "paired_differences.png", METHOD_NAMES)
    contrast = head_to_head(results)
    report.write_csv(out / "sft_vs_peers.csv", contrast)
    remaining = total - len(results)
    head = report.header(
        command,
        f"{(time.time() - started) / 60:.1f} min for {trained} new runs; "
        f"{len(results)} of {total} runs finished"
        + (f" ({remaining} still to run)" if remaining else ""),
        lines=[
            "Test classes, final epoch; backbone "
            f"{base['backbone']} (pretrained {base['pretrained']}, trained from block "
            f"{base['train_from_block']}), {base['epochs']} epochs, schedule: no "
            f"augmentation for {base['warmup_epochs']} epochs, then a ramp over "
            f"{base['ramp_epochs']}.",
            (
                "Learning rates and options: chosen on validation classes "
                f"({chosen})"
                if chosen
                else "Learning rates: the registry's; options: each paper's defaults"
            ),
            "R@1 and MAP@R in %, mean ± std over seeds; Δ: the paired difference to "
            "the baseline of the same seeds, with a 95 % t interval over seeds.",
        ],
    )
    report.write_summary(
        out / "summary.md",
        "Feature augmentation family (paired seeds)",
        head,
        markdown(rows),
        "## ΔR@1 per data set (points; the verdict of its 95 % interval)\n\n"
        + verdict_table(rows),
        "## SFT against its peers (SFT minus the peer, same seeds)\n\n"
        + head_to_head_table(contrast),
    )
    (out / "command.json").write_text(
        json.dumps({"command": command, "machine": report.machine_description()})
    )
    return rows


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
    untuned = "skip" if args.max_runs == 0 else "refuse"
    configs = family_configs(
        base, args.datasets, args.losses, args.seeds, chosen, args.methods, untuned
    )
    if chosen is not None and untuned == "skip":
        left_out = sorted(
            (d, loss, m)
            for d in args.datasets
            for loss in args.losses
            for m in compared_methods(loss, args.methods)
            if m not in chosen.get(d, {}).get(loss, {})
        )
        if left_out:
            print(f"not tuned yet, left out of the report: {left_out}", flush=True)
    # whether a block is complete is judged on all its methods, with --methods too
    # (where the chosen settings name them all)
    try:
        blocks = family_configs(base, args.datasets, args.losses, args.seeds, chosen)
    except ValueError:
        blocks = configs
    finished = finished_results(blocks, out, args.reuse)
    if args.max_runs != 0:
        here = device_description(base["device"])
        stale = partial_blocks_from_elsewhere(blocks, finished, here)
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
    rows = write_reports(
        out, results, len(configs), trained, base, args, command, started
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
