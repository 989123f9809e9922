"""How much does training move the embedding? The condition under which the
family's gains appeared, measured on the comparison's data sets.

    python -m benchmarks.headroom --datasets emoji icons --seeds 0 1 2 3 4 5 6 7

On the comparison's test classes, with the comparison's evaluation (PML's
GlobalEmbeddingSpaceTester, R@1 and MAP@R), it evaluates what the trained part of a
run starts from:

* **backbone features**: the backbone's pooled features with no embedding layer,
  nothing trained: in the comparison's setup the ImageNet-pretrained
  EfficientNet-Lite0's 1280 features (one number per data set);
* **initial model**: the run's model before its first step, per seed: the same
  features through the run's randomly initialised embedding layer (its BatchNorm
  in eval mode, at its initial running mean 0 and variance 1: a random projection
  of the features);

and sets them beside the trained baselines of the committed comparison
(``--reuse``: the final-epoch rows of method ``none``), per loss. The gain of
training over the backbone features is what the trained part adds: on the hold-out
kept outside the project (a frozen encoder with a trained head; issue 33), where no
method helped, it was about one point of R@1.

Writes headroom.csv (one row per data set and model) and headroom.md to ``--out``.
Nothing is trained; a few minutes on the 2-core VM once the feature caches exist.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from . import report
from .family import FAMILY, base_options, build_parser
from .train import RunConfig, RunHooks, build_run

NOT_TRAINED = ("backbone features", "initial model")


def evaluate(cfg, run_dir, features_only):
    """R@1 and MAP@R of the untrained model of ``cfg`` on its evaluation classes
    (``features_only``: the trunk's pooled features), and the data fingerprint."""
    device = torch.device(cfg.device)
    models, objective, _, _, _, train_set, eval_set, info = build_run(cfg, device)
    if features_only:
        models["embedder"] = torch.nn.Identity()
    hooks = RunHooks(cfg, run_dir, models, objective, (train_set, eval_set), device)
    hooks.tester.test({"val": eval_set}, 0, models["trunk"], models["embedder"])
    found = hooks.tester.all_accuracies["val"]
    return {m: float(found[f"{m}_level0"]) for m in report.PAIRED_METRICS}, info[
        "data_fingerprint"
    ]


def untrained_rows(base, datasets, seeds, run_dir):
    rows = []
    for dataset in datasets:
        for model in NOT_TRAINED:
            for seed in seeds[:1] if model == NOT_TRAINED[0] else seeds:
                cfg = RunConfig.make(
                    **base,
                    dataset=dataset,
                    loss="multisimilarity",
                    method="none",
                    seed=seed,
                )
                metrics, fingerprint = evaluate(cfg, run_dir, model == NOT_TRAINED[0])
                rows.append(
                    dict(
                        dataset=dataset,
                        model=model,
                        seed=seed,
                        data_fingerprint=fingerprint,
                        **metrics,
                    )
                )
    return pd.DataFrame(rows)


def trained_rows(paths, datasets, seeds):
    frames = [pd.read_csv(p) for p in paths]
    runs = pd.concat(frames) if frames else pd.DataFrame()
    if not len(runs):
        return runs
    runs = runs[
        (runs.method == "none")
        & (runs.split == "test")
        & runs.dataset.isin(datasets)
        & runs.seed.isin(seeds)
    ]
    # one row per run: a committed row and its rerun (or the same run under its old
    # and new name) count once
    runs = runs.drop_duplicates(["dataset", "loss", "seed"])
    return runs.assign(model="trained baseline: " + runs.loss)[
        ["dataset", "model", "seed", "data_fingerprint", *report.PAIRED_METRICS]
    ]


def data_line(dataset, untrained, trained):
    """Whether the trained rows of ``dataset`` trained on the data evaluated here."""
    here = set(untrained[untrained.dataset == dataset].data_fingerprint)
    rows = trained[trained.dataset == dataset].data_fingerprint if len(trained) else []
    rows = pd.Series(rows, dtype=object)
    if not len(rows):
        return f"{dataset}: no trained rows (--reuse)."
    there = set(rows.dropna())
    recorded = f"{rows.notna().sum()} of {len(rows)} trained rows record their data"
    if not there:
        return f"{dataset}: the trained rows do not record their data."
    if there == here:
        return f"{dataset}: {recorded}, and trained on the data evaluated here."
    return f"{dataset}: {recorded}: {sorted(there)}, not {sorted(here)}."


def table(frame):
    """Per data set and model: seeds, means and stds, and R@1 over the backbone
    features."""
    rows = []
    for (dataset, model), group in frame.groupby(["dataset", "model"], sort=False):
        row = dict(dataset=dataset, model=model, seeds=group.seed.nunique())
        for m in report.PAIRED_METRICS:
            row[f"{m}_mean"] = group[m].mean()
            row[f"{m}_std"] = group[m].std(ddof=1) if len(group) > 1 else 0.0
        rows.append(row)
    out = pd.DataFrame(rows)
    start = out[out.model == NOT_TRAINED[0]].set_index("dataset")["recall_at_1_mean"]
    out["gain_recall_at_1_over_features"] = out.recall_at_1_mean - out.dataset.map(
        start
    )
    return out


def markdown(rows):
    return report.markdown(
        rows,
        {
            "data set": "dataset",
            "model": "model",
            "seeds": "seeds",
            "R@1": lambda r: report.mean_std(r, "recall_at_1"),
            "MAP@R": lambda r: report.mean_std(r, "mean_average_precision_at_r"),
            "R@1 over the backbone features": lambda r: (
                f"{100 * r['gain_recall_at_1_over_features']:+.1f}"
            ),
        },
    )


def main(argv=None):
    parser = build_parser(__doc__.splitlines()[0], split="test")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    parser.add_argument("--out", default="runs/headroom")
    args = parser.parse_args(argv)
    if args.split != "test":
        parser.error("the comparison's test classes only (--split test)")
    unknown = set(args.losses) - set(FAMILY)
    if unknown:
        parser.error(f"unknown losses {sorted(unknown)}")
    base = base_options(argparse.Namespace(**{**vars(args), "workers": 1}))
    base["progress"] = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as logs:  # the tester's record-keeper logs
        frame = untrained_rows(base, args.datasets, args.seeds, Path(logs))
    trained = trained_rows(args.reuse, args.datasets, args.seeds)
    data = [data_line(d, frame, trained) for d in args.datasets]
    frame = pd.concat([frame, trained], ignore_index=True)
    rows = table(frame)
    report.write_csv(out / "headroom.csv", rows)
    command = "python -m benchmarks.headroom " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    head = report.header(
        command,
        f"{(time.time() - started) / 60:.1f} min",
        lines=[
            "Test classes; R@1 and MAP@R in %, mean ± std over seeds; trained "
            "baselines: the final epoch of the committed comparison's rows.",
            *data,
        ],
    )
    report.write_summary(
        out / "headroom.md",
        "How much training moves the embedding",
        head,
        markdown(rows),
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
