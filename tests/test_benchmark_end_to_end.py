"""The real-data path end to end: npm download, rendering, training, evaluation,
report, record-keeper logs and diagnostics. CI runs the short version (40 classes,
one epoch); the full quick comparison is marked slow (``pytest -m slow``)."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from benchmarks import compare, diagnostics

CACHE = os.environ.get(
    "PML_SFT_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "pml_sft")
)

needs_npm = pytest.mark.skipif(
    shutil.which("npm") is None, reason="npm is not installed"
)


@needs_npm
def test_short_real_data_comparison(tmp_path):
    out = tmp_path / "out"
    compare.main(
        [
            "--quick",
            "--epochs",
            "1",
            "--max-classes",
            "40",
            "--workers",
            "1",
            "--losses",
            "multisimilarity",
            "proxyanchor",
            "--cache-dir",
            CACHE,
            "--out",
            str(out),
            "--batch-size",
            "32",
        ]
    )
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == 6
    for row in rows:
        for metric in (
            "recall_at_1",
            "recall_at_8",
            "mean_average_precision_at_r",
            "NMI",
        ):
            assert 0 <= float(row[metric]) <= 1
        assert float(row["recall_at_8"]) >= float(row["recall_at_1"])
    summary = (out / "summary.md").read_text()
    assert (
        "Command: `python -m benchmarks.compare --quick" in summary and "R@1" in summary
    )
    assert (out / "recall_at_1.png").stat().st_size > 0
    assert (out / "learning_curves.png").stat().st_size > 0

    sft_run = next(
        p for p in out.iterdir() if p.name.startswith("emoji_multisimilarity_sft")
    )
    result = json.loads((sft_run / "result.json").read_text())
    assert result["num_eval_classes"] == 20 and result["num_train_classes"] == 20
    log = sft_run / "logs" / "metric_loss_FeatureTransformLoss.csv"
    header = log.read_text().splitlines()[0]
    assert "mean_center_angle" in header and "num_augmented" in header
    assert list((sft_run / "logs").glob("*SphericalFeatureTransform*.csv"))

    diagnostics.main(
        ["--run", str(sft_run), "--out", str(tmp_path / "diag"), "--min-samples", "3"]
    )
    report = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    assert set(report["covariance_dissimilarity"]) == {
        "none",
        "translation",
        "rotation",
    }
    assert report["rotation_translation_gap_degrees"]["mean"] >= 0
    assert (tmp_path / "diag" / "diagnostics.png").exists()


@needs_npm
@pytest.mark.slow
def test_full_quick_comparison(tmp_path):
    compare.main(["--quick", "--cache-dir", CACHE, "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(rows) == 12


def test_finished_runs_are_read_without_starting_workers(tmp_path, monkeypatch):
    configs = [compare.RunConfig(seed=s) for s in (0, 1)]
    for c in configs:
        run_dir = tmp_path / c.name()
        run_dir.mkdir()
        finished = {"name": c.name(), "identity": c.identity()}
        (run_dir / "result.json").write_text(json.dumps(finished))

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started for finished runs")

    monkeypatch.setattr(compare.multiprocessing, "get_context", no_pool)
    monkeypatch.setattr(compare, "prepare_data", no_pool)
    results = compare.run_all(configs, tmp_path, workers=2)
    assert [r["name"] for r in results] == [c.name() for c in configs]
