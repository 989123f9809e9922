"""Each method's options and each baseline's learning rate, chosen on validation
classes with the same budget for every arm.

    python -m benchmarks.family_tuning --datasets icons --seeds 100 101

The rule, fixed before the runs: every arm (a loss's baseline, or one method on
one loss) gets three settings, each trained once per tuning seed, on the
validation split (held-out training classes; the test classes are not touched);
the setting with the highest mean R@1 at the final epoch wins, ties to the one
listed first (the default).

1. Baselines: each loss at 1, 0.5 and 2 times its learning rate of LOSS_LR.
2. Methods, at their loss's chosen rate, over their own option:
   SFT and translation: num_targets 1, 2, 4; Embedding Expansion: num_points
   2, 1, 4; Proxy Synthesis: (alpha, mu) (0.4, 1), (0.4, 0.5), (1, 1).
   Symmetrical Synthesis has no option; its three settings are 1, 0.5 and 2 times
   the chosen rate.

Every augmenter keeps the validated schedule (no augmentation for half the
epochs, a ramp over the next quarter). Finished runs are reused (``--reuse``
takes committed runs.csv files), and an arm's methods start once its baseline is
tuned. Results in ``--out``: runs.csv, tuning.csv (one row per setting: means
and stds over seeds, and whether it won), tuning.md and chosen.json, the input
of ``python -m benchmarks.family --chosen``.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import registry, report
from .family import (
    LOSS_LR,
    METHOD_NAMES,
    PAIRED_METRICS,
    base_options,
    build_parser,
    compared_methods,
    finished_results,
    per_run_rows,
    train_missing,
)
from .train import RunConfig

# each method's three settings, the default first (registry.METHODS[...].grid);
# "lr_factor" scales the loss's chosen learning rate
METHOD_SETTINGS = {
    name: list(method.grid)
    for name, method in registry.METHODS.items()
    if name != "none" and method.losses
}


def baseline_settings(loss):
    lr = LOSS_LR.get(loss, RunConfig().lr)
    return [{"lr": lr * s["lr_factor"]} for s in registry.METHODS["none"].grid]


def method_settings(method, lr):
    """The run options of ``method``'s settings at its loss's chosen rate ``lr``."""
    settings = []
    for setting in registry.METHODS[method].grid:
        setting = dict(setting)
        factor = setting.pop("lr_factor", 1.0)
        settings.append({"lr": lr * factor, **setting})
    return settings


def arm_configs(base, dataset, loss, method, settings, seeds):
    return [
        [
            RunConfig.make(
                **{**base, **setting},
                dataset=dataset,
                loss=loss,
                method=method,
                seed=seed,
            )
            for seed in seeds
        ]
        for setting in settings
    ]


def score(finished, configs):
    """Mean final-epoch R@1 of a setting's runs, or None while one is missing."""
    results = [finished.get(c.name()) for c in configs]
    if any(r is None for r in results):
        return None
    return float(np.mean([r["metrics"]["recall_at_1"] for r in results]))


def choose(scores):
    """The index of the winning setting (highest score; ties: the first)."""
    return int(np.argmax(scores))  # argmax takes the first of equal maxima


def tune(base, datasets, losses, seeds, finished, train, methods=None):
    """Tune every arm (``methods``: only those); ``train(configs)`` trains the
    missing runs of ``configs`` into ``finished``. Returns (rows, chosen): one row per setting tried, and per
    data set, loss and method the options of the winning setting (complete arms
    only)."""
    rows, chosen = [], {}
    arms = [(d, loss) for d in datasets for loss in losses]
    baselines = {
        arm: arm_configs(base, *arm, "none", baseline_settings(arm[1]), seeds)
        for arm in arms
    }
    train([c for runs in baselines.values() for runs_ in runs for c in runs_])
    method_arms = {}
    for arm in arms:
        settings = baseline_settings(arm[1])
        scores = [score(finished, runs) for runs in baselines[arm]]
        rows += setting_rows(arm, "none", settings, baselines[arm], scores, finished)
        if None in scores:
            continue
        best = settings[choose(scores)]
        chosen.setdefault(arm[0], {}).setdefault(arm[1], {})["none"] = best
        for method in compared_methods(arm[1], methods):
            method_runs = method_settings(method, best["lr"])
            method_arms[(*arm, method)] = (
                method_runs,
                arm_configs(base, *arm, method, method_runs, seeds),
            )
    train([c for _, runs in method_arms.values() for runs_ in runs for c in runs_])
    for (dataset, loss, method), (settings, runs) in method_arms.items():
        scores = [score(finished, r) for r in runs]
        rows += setting_rows((dataset, loss), method, settings, runs, scores, finished)
        if None not in scores:
            chosen[dataset][loss][method] = settings[choose(scores)]
    return rows, chosen


def setting_rows(arm, method, settings, runs, scores, finished):
    complete = None not in scores
    best = choose(scores) if complete else None
    rows = []
    for i, (setting, configs) in enumerate(zip(settings, runs)):
        results = [finished[c.name()] for c in configs if c.name() in finished]
        row = dict(dataset=arm[0], loss=arm[1], method=method)
        row["setting"] = json.dumps(setting, sort_keys=True)
        frame = report.runs_frame(results)
        if len(frame):
            stats = report.summary(frame, ["loss"], PAIRED_METRICS).iloc[0].to_dict()
            row.update(
                {k: stats[k] for k in stats if k not in ("loss", "train_minutes_mean")}
            )
        else:
            row.update(seeds=0, split="")
            row.update(
                {
                    f"{m}_{s}": float("nan")
                    for m in PAIRED_METRICS
                    for s in ("mean", "std")
                }
            )
        row["chosen"] = i == best
        rows.append(row)
    return rows


def markdown(rows):
    return report.markdown(
        rows,
        {
            "data set": "dataset",
            "loss": "loss",
            "method": lambda r: METHOD_NAMES[r["method"]],
            "setting": lambda r: f"`{r['setting']}`",
            "seeds": "seeds",
            "R@1": lambda r: report.mean_std({**r, "seeds": 2}, "recall_at_1"),
            "MAP@R": lambda r: report.mean_std(
                {**r, "seeds": 2}, "mean_average_precision_at_r"
            ),
            "chosen": lambda r: "**yes**" if r["chosen"] else "",
        },
    )


def main(argv=None):
    parser = build_parser(__doc__.splitlines()[0], split="val")
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    parser.add_argument("--out", default="runs/family_tuning")
    args = parser.parse_args(argv)
    if args.split != "val":
        parser.error("tuning reads validation classes only (--split val)")
    base = base_options(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    finished = {}
    budget = [args.max_runs]

    def train(configs):
        # the first call (the baselines) says whether a --reuse file holds none
        warn = not finished
        finished.update(finished_results(configs, out, args.reuse, warn))
        limit = budget[0]
        trained = train_missing(configs, finished, out, args.workers, limit)
        if limit is not None:
            budget[0] = limit - trained

    started = time.time()
    rows, chosen = tune(
        base, args.datasets, args.losses, args.seeds, finished, train, args.methods
    )
    command = "python -m benchmarks.family_tuning " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report.write_csv(out / "runs.csv", per_run_rows(finished.values()))
    report.write_csv(out / "tuning.csv", rows)
    (out / "chosen.json").write_text(json.dumps(chosen, indent=1, sort_keys=True))
    arms = len(args.datasets) * sum(
        1 + len(compared_methods(loss, args.methods)) for loss in args.losses
    )
    done = sum(len(m) for d in chosen.values() for m in d.values())
    head = report.header(
        command,
        f"{(time.time() - started) / 60:.1f} min; {len(finished)} runs "
        f"finished; {done} of {arms} arms tuned",
        lines=[
            "Validation classes, final epoch, seeds "
            f"{' '.join(map(str, args.seeds))}; R@1 and MAP@R in %, mean ± std over "
            "seeds. The winner: the highest mean R@1, ties to the first setting."
        ],
    )
    report.write_summary(
        out / "tuning.md",
        "Feature augmentation family: settings chosen on validation classes",
        head,
        markdown(rows),
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
