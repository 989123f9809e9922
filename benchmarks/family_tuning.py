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

from .compare import machine_description, write_csv
from .family import (
    FAMILY,
    LOSS_LR,
    METHOD_NAMES,
    PAIRED_METRICS,
    base_options,
    build_parser,
    finished_results,
    per_run_rows,
    train_missing,
)
from .train import RunConfig, git_commit

LR_FACTORS = (1.0, 0.5, 2.0)
# each method's three settings, the default first; "lr_factor" scales the loss's
# chosen learning rate (for the method without options of its own)
METHOD_SETTINGS = {
    "translation": [{"num_targets": 1}, {"num_targets": 2}, {"num_targets": 4}],
    "sft": [{"num_targets": 1}, {"num_targets": 2}, {"num_targets": 4}],
    "ee": [{"num_points": 2}, {"num_points": 1}, {"num_points": 4}],
    "ss": [{"lr_factor": f} for f in LR_FACTORS],
    "ps": [
        {"ps_alpha": 0.4, "ps_mu": 1.0},
        {"ps_alpha": 0.4, "ps_mu": 0.5},
        {"ps_alpha": 1.0, "ps_mu": 1.0},
    ],
}


def baseline_settings(loss):
    lr = LOSS_LR.get(loss, RunConfig().lr)
    return [{"lr": lr * f} for f in LR_FACTORS]


def method_settings(method, lr):
    """The run options of ``method``'s settings at its loss's chosen rate ``lr``."""
    settings = []
    for setting in METHOD_SETTINGS[method]:
        setting = dict(setting)
        factor = setting.pop("lr_factor", 1.0)
        settings.append({"lr": lr * factor, **setting})
    return settings


def arm_configs(base, dataset, loss, method, settings, seeds):
    return [
        [
            RunConfig(
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


def tune(base, datasets, losses, seeds, finished, train):
    """Tune every arm; ``train(configs)`` trains the missing runs of ``configs``
    into ``finished``. Returns (rows, chosen): one row per setting tried, and per
    data set, loss and method the options of the winning setting (complete arms
    only)."""
    rows, chosen = [], {}
    arms = [(d, loss) for d in datasets for loss in losses]
    baselines = {
        arm: arm_configs(base, *arm, "none", baseline_settings(arm[1]), seeds)
        for arm in arms
    }
    train([c for runs in baselines.values() for runs_ in runs for c in runs_])
    methods = {}
    for arm in arms:
        settings = baseline_settings(arm[1])
        scores = [score(finished, runs) for runs in baselines[arm]]
        rows += setting_rows(arm, "none", settings, baselines[arm], scores, finished)
        if None in scores:
            continue
        best = settings[choose(scores)]
        chosen.setdefault(arm[0], {}).setdefault(arm[1], {})["none"] = best
        for method in FAMILY[arm[1]]:
            method_runs = method_settings(method, best["lr"])
            methods[(*arm, method)] = (
                method_runs,
                arm_configs(base, *arm, method, method_runs, seeds),
            )
    train([c for _, runs in methods.values() for runs_ in runs for c in runs_])
    for (dataset, loss, method), (settings, runs) in methods.items():
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
        row = dict(
            dataset=arm[0],
            loss=arm[1],
            method=method,
            setting=json.dumps(setting, sort_keys=True),
            seeds=len(results),
            split=",".join(sorted({r["config"]["split"] for r in results})),
        )
        for m in PAIRED_METRICS:
            values = [r["metrics"][m] for r in results]
            row[f"{m}_mean"] = float(np.mean(values)) if values else float("nan")
            row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        row["chosen"] = i == best
        rows.append(row)
    return rows


def markdown(rows):
    lines = [
        "| data set | loss | method | setting | seeds | R@1 | MAP@R | chosen |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['loss']} | {METHOD_NAMES[r['method']]} | "
            f"`{r['setting']}` | {r['seeds']} | "
            f"{100 * r['recall_at_1_mean']:.1f} ± {100 * r['recall_at_1_std']:.1f} | "
            f"{100 * r['mean_average_precision_at_r_mean']:.1f} ± "
            f"{100 * r['mean_average_precision_at_r_std']:.1f} | "
            f"{'**yes**' if r['chosen'] else ''} |"
        )
    return "\n".join(lines)


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
        finished.update(finished_results(configs, out, args.reuse))
        limit = budget[0]
        trained = train_missing(configs, finished, out, args.workers, limit)
        if limit is not None:
            budget[0] = limit - trained

    started = time.time()
    rows, chosen = tune(base, args.datasets, args.losses, args.seeds, finished, train)
    command = "python -m benchmarks.family_tuning " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    write_csv(out / "runs.csv", per_run_rows(finished.values()))
    write_csv(out / "tuning.csv", rows)
    (out / "chosen.json").write_text(json.dumps(chosen, indent=1, sort_keys=True))
    arms = sum(1 + len(FAMILY[loss]) for loss in args.losses) * len(args.datasets)
    done = sum(len(m) for d in chosen.values() for m in d.values())
    header = [
        f"Command: `{command.strip()}`",
        f"Machine: {machine_description()}",
        f"Code: commit {git_commit()}",
        f"Wall time: {(time.time() - started) / 60:.1f} min; {len(finished)} runs "
        f"finished; {done} of {arms} arms tuned",
        "Validation classes, final epoch, seeds "
        f"{' '.join(map(str, args.seeds))}; R@1 and MAP@R in %, mean ± std over "
        "seeds. The winner: the highest mean R@1, ties to the first setting.",
        "",
    ]
    (out / "tuning.md").write_text(
        "# Feature augmentation family: settings chosen on validation classes\n\n"
        + "\n".join(header)
        + "\n"
        + markdown(rows)
        + "\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
