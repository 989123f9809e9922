"""The benchmarks' one report module: from runs (one row per run, as in runs.csv)
to means and stds over seeds, paired differences with t intervals, markdown
tables, the header every summary starts with, and the plots. Used by compare, the
family comparison and its tuning."""

import multiprocessing
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = (
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "mean_average_precision_at_r",
    "NMI",
)
LABELS = {
    "recall_at_1": "R@1",
    "recall_at_2": "R@2",
    "recall_at_4": "R@4",
    "recall_at_8": "R@8",
    "mean_average_precision_at_r": "MAP@R",
    "NMI": "NMI",
}
PAIRED_METRICS = ("recall_at_1", "mean_average_precision_at_r")
RUN_COLUMNS = ("name", "dataset", "loss", "method", "seed", "split")
PROVENANCE = ("train_seconds", "commit", "data_fingerprint", "cpu")


def runs_frame(results, metrics=PAIRED_METRICS, extra=()):
    """One row per run (the columns of runs.csv), sorted by name; ``extra`` adds
    config fields (e.g. a study's ``variant``)."""
    rows = [
        {
            "name": r["name"],
            **{k: r["config"][k] for k in (*RUN_COLUMNS[1:], *extra)},
            **{m: r["metrics"][m] for m in metrics},
            **{k: r.get(k) for k in PROVENANCE},
            **({"best_epoch": r["best_epoch"]} if "best_epoch" in r else {}),
        }
        for r in results
    ]
    frame = pd.DataFrame(rows)
    return frame.sort_values("name", ignore_index=True) if rows else frame


def write_csv(path, rows):
    """A frame or a list of dicts as CSV (nothing for no rows)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if len(frame):
        frame.to_csv(path, index=False)


def summary(frame, by, metrics=METRICS):
    """Per group: ``seeds``, ``split`` and each metric's mean and sample std over
    seeds (0 for one seed), and the mean training minutes; groups in order of
    appearance."""
    groups = frame.groupby(list(by), sort=False)
    out = groups.agg(
        split=("split", lambda s: ",".join(sorted(set(s)))),
        seeds=("seed", "size"),
        **{f"{m}_mean": (m, "mean") for m in metrics},
        **{
            f"{m}_std": (m, lambda s: s.std(ddof=1) if len(s) > 1 else 0.0)
            for m in metrics
        },
        train_minutes_mean=("train_seconds", lambda s: s.mean() / 60),
    )
    return out.reset_index()


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
    """Whether two runs trained on the same data and the same kind of CPU: their
    data fingerprints agree, and so do their CPUs, where both rows record them
    (rows from before they were recorded pair with anything). The same run with
    torch's AVX2 kernels instead of its AVX-512 ones, on the same data, ended 3
    points of validation R@1 apart (2026-12-02)."""
    return all(
        not _given(a.get(key)) or not _given(b.get(key)) or a[key] == b[key]
        for key in ("data_fingerprint", "cpu")
    )


def _given(value):
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def paired_difference(runs, reference, metrics=PAIRED_METRICS):
    """The paired difference of two arms given as frames with a ``seed`` column:
    ``paired_seeds`` (both runs there and comparable), ``unpaired_seeds`` (both
    there, not comparable) and, per metric, the mean difference with its 95 % t
    interval over the paired seeds (NaN without any)."""
    a = {row["seed"]: row for row in runs.to_dict("records")}
    b = {row["seed"]: row for row in reference.to_dict("records")}
    both = sorted(set(a) & set(b))
    paired = [s for s in both if comparable(a[s], b[s])]
    row = dict(paired_seeds=len(paired), unpaired_seeds=len(both) - len(paired))
    for m in metrics:
        mean = low = high = float("nan")
        if paired:
            mean, low, high = t_interval([a[s][m] - b[s][m] for s in paired])
        row.update(
            {
                f"delta_{m}_mean": mean,
                f"delta_{m}_ci_low": low,
                f"delta_{m}_ci_high": high,
            }
        )
    return row


def paired_summary(frame, methods, losses):
    """Per (dataset, loss, method): means and stds over seeds and, for a method,
    the paired difference to the baseline ("none") of the same seeds; sorted by
    data set, then ``losses``' and ``methods``' order."""
    rows = []
    if not len(frame):
        return pd.DataFrame(rows)
    for (dataset, loss, method), arm in frame.groupby(["dataset", "loss", "method"]):
        row = dict(dataset=dataset, loss=loss, method=method, seeds=len(arm))
        row["split"] = ",".join(sorted(set(arm["split"])))
        for m in PAIRED_METRICS:
            row[f"{m}_mean"] = float(arm[m].mean(skipna=False))
            row[f"{m}_std"] = (
                float(arm[m].std(ddof=1, skipna=False)) if len(arm) > 1 else 0.0
            )
        base = frame[
            (frame.dataset == dataset) & (frame.loss == loss) & (frame.method == "none")
        ]
        row.update(paired_difference(arm, base if method != "none" else base[:0]))
        rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    order = {"loss": _order(losses), "method": _order(methods)}
    return out.sort_values(
        ["dataset", "loss", "method"],
        key=lambda col: col.map(order[col.name]) if col.name in order else col,
        ignore_index=True,
    )


def _order(names):
    names = list(names)
    return lambda name: names.index(name) if name in names else len(names)


def head_to_head(frame, losses, method="sft", reference="translation"):
    """Per (dataset, loss) where both ran: ``method`` minus ``reference`` over the
    same seeds, with 95 % t intervals (SFT against translation, the baseline SFT
    claims to improve on)."""
    rows = []
    if not len(frame):
        return pd.DataFrame(rows)
    for (dataset, loss), block in frame.groupby(["dataset", "loss"]):
        runs, ref = block[block.method == method], block[block.method == reference]
        if len(runs) and len(ref):
            row = dict(dataset=dataset, loss=loss, method=method, reference=reference)
            rows.append({**row, **paired_difference(runs, ref)})
    rows.sort(key=lambda r: (r["dataset"], _order(losses)(r["loss"])))
    return pd.DataFrame(rows)


def verdict(row):
    """'above', 'below' or 'no difference' from the paired R@1 interval."""
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
    if not np.isfinite(low):
        return f"{100 * mean:+.2f} (1 seed)"
    return f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def mean_std(row, metric):
    """ "64.2 ± 0.3" in %, or "64.2" for one seed."""
    mean = f"{100 * row[f'{metric}_mean']:.1f}"
    return mean if row["seeds"] == 1 else f"{mean} ± {100 * row[f'{metric}_std']:.1f}"


def markdown(rows, columns):
    """A compact markdown table: ``columns`` maps each header to a row's key or to
    a function of the row."""
    records = _records(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in records:
        cells = [get(row) if callable(get) else row[get] for get in columns.values()]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _records(rows):
    return rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)


def metric_columns(label_keys, metrics=METRICS):
    """Columns of a summary table: the labels, seeds and each metric's mean ± std."""
    columns = {key: key for key in label_keys}
    columns["seeds"] = "seeds"
    for m in metrics:
        columns[LABELS[m]] = lambda row, m=m: mean_std(row, m)
    return columns


def machine_description():
    import torch

    from .train import cpu_description

    return (
        f"{platform.platform()}, {multiprocessing.cpu_count()} CPU cores "
        f"({cpu_description()}), Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def header(command, wall_time, results=(), lines=()):
    """The lines every summary starts with: the command, the machine, the code
    (this commit and, with ``results``, the commits that trained them), the wall
    time, then ``lines``."""
    from .train import git_commit

    code = f"Code: commit {git_commit()}"
    if len(results):
        commits = Counter(
            r.get("commit") or "an earlier commit (not recorded)" for r in results
        )
        code += "; runs trained at " + ", ".join(
            f"{c} ({n})" for c, n in commits.items()
        )
    return [
        f"Command: `{command.strip()}`",
        f"Machine: {machine_description()}",
        code,
        f"Wall time: {wall_time}",
        *lines,
        "",
    ]


def write_summary(path, title, head, *sections):
    """``path``: the title, the header lines, then each section's text."""
    Path(path).write_text(
        f"# {title}\n\n" + "\n".join(head) + "\n" + "\n\n".join(sections) + "\n"
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall(rows, path, losses, methods):
    """Bars of mean Recall@1 per loss and method (error bars: std over seeds)."""
    plt = _pyplot()
    rows = _records(rows)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(losses), 3.6))
    width = 0.8 / len(methods)
    index = {(r["loss"], r["method"]): r for r in rows}
    one_seed = all(r["seeds"] == 1 for r in rows)
    for j, method in enumerate(methods):
        found = [
            (i, index[(l, method)])
            for i, l in enumerate(losses)
            if (l, method) in index
        ]
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, _ in found]
        means = [100 * r["recall_at_1_mean"] for _, r in found]
        stds = None if one_seed else [100 * r["recall_at_1_std"] for _, r in found]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(range(len(losses)))
    ax.set_xticklabels(losses)
    ax.set_ylabel("Recall@1 (%) on unseen classes")
    values = [100 * r["recall_at_1_mean"] for r in rows]
    if values:
        ax.set_ylim(max(0, min(values) - 10), min(100, max(values) + 5))
    ax.legend(title="augmentation")
    ax.set_title(
        "one seed: no error bars (about 1 point is within seed noise)"
        if one_seed
        else "mean ± std over seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results, path, losses, series):
    """Mean Recall@1 per evaluated epoch, one panel per loss and one line per
    ``series(result)`` label; the plotted values also go to a CSV file beside."""
    plt = _pyplot()
    rows = []
    for r in results:
        for epoch, value in zip(r["curves"]["epoch"], r["curves"]["recall_at_1"]):
            if value is not None:
                rows.append(
                    dict(
                        loss=r["config"]["loss"],
                        series=series(r),
                        epoch=epoch,
                        value=value,
                    )
                )
    frame = pd.DataFrame(rows, columns=["loss", "series", "epoch", "value"])
    means = frame.groupby(["loss", "series", "epoch"], sort=False)["value"].mean()
    means = means.rename("recall_at_1_mean").reset_index()
    fig, axes = plt.subplots(
        1, len(losses), figsize=(3.4 * len(losses), 3.2), squeeze=False
    )
    for ax, loss in zip(axes[0], losses):
        mine = means[means.loss == loss]
        for line, (label, points) in enumerate(mine.groupby("series", sort=False)):
            style = ("-", "--", ":")[line // 10 % 3]  # the colour cycle has 10
            ax.plot(
                points.epoch,
                points.recall_at_1_mean,
                marker="o",
                linestyle=style,
                label=label,
            )
        ax.set_title(loss)
        ax.set_xlabel("epoch")
        ax.set_ylabel("Recall@1")
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_csv(Path(path).with_suffix(".csv"), means)


def plot_differences(rows, path, labels):
    """The paired R@1 differences with their intervals, one panel per data set."""
    rows = [
        r for r in _records(rows) if r["method"] != "none" and r["paired_seeds"] >= 2
    ]
    if not rows:
        return
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(5.5 * len(datasets), 0.35 * len(rows) + 1.5),
        squeeze=False,
    )
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        means = np.array([100 * r["delta_recall_at_1_mean"] for r in mine])
        lows = means - [100 * r["delta_recall_at_1_ci_low"] for r in mine]
        highs = np.array([100 * r["delta_recall_at_1_ci_high"] for r in mine]) - means
        ys = np.arange(len(mine))[::-1]
        ax.errorbar(means, ys, xerr=[lows, highs], fmt="o", capsize=3)
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_yticks(ys)
        ax.set_yticklabels(
            [f"{r['loss']}: {labels[r['method']]}" for r in mine], fontsize="small"
        )
        ax.set_xlabel("R@1 minus the baseline's, same seed (points; 95 % t interval)")
        seeds = sorted({r["paired_seeds"] for r in mine})
        ax.set_title(f"{dataset}, test classes ({'/'.join(map(str, seeds))} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
