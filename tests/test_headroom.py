"""benchmarks.headroom: the untrained models' R@1 beside the trained baselines, on
tiny fake icons."""

import csv

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import headroom, train
from benchmarks.family import base_options, build_parser
from benchmarks.train import RunConfig, build_run

from .helpers import TINY_FAMILY_ARGS, fake_emoji_data


@pytest.fixture
def fake_icons(monkeypatch):
    fake = fake_emoji_data(16, 6, 16)
    monkeypatch.setattr(train.icon_themes, "prepare", lambda *a, **k: fake)


def tiny_config(tmp_path, seed=0):
    args = build_parser("", "test").parse_args(
        TINY_FAMILY_ARGS + ["--cache-dir", str(tmp_path / "cache")]
    )
    base = {**base_options(args), "threads": 0, "progress": False}
    return RunConfig.make(
        **base, dataset="icons", loss="multisimilarity", method="none", seed=seed
    )


def recall_at_1(embeddings, labels):
    """R@1 by brute force: each sample's nearest other sample (cosine)."""
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    return float((labels[sim.argmax(1)] == labels).double().mean())


@pytest.mark.parametrize("features_only", [True, False])
def test_the_untrained_model_is_evaluated_as_the_runs_are(
    tmp_path, fake_icons, features_only
):
    cfg = tiny_config(tmp_path)
    metrics, fingerprint = headroom.evaluate(cfg, tmp_path / "t", features_only)
    models, *_, eval_set, _ = build_run(cfg, torch.device("cpu"))
    trunk, embedder = models["trunk"].eval(), models["embedder"].eval()
    with torch.no_grad():
        x = torch.stack([eval_set[i][0] for i in range(len(eval_set))])
        features = trunk(x)
        emb = features if features_only else embedder(features)
    labels = torch.as_tensor(eval_set.labels)
    assert metrics["recall_at_1"] == pytest.approx(recall_at_1(emb, labels))
    assert len(fingerprint) == 12


def test_the_table_sets_the_trained_baselines_beside_the_untrained_models(
    tmp_path, fake_icons
):
    runs = tmp_path / "runs.csv"
    rows = [
        ("icons_multisimilarity_none_a", "multisimilarity", "none", 0, "test", 0.9),
        ("icons_multisimilarity_none_b", "multisimilarity", "none", 1, "test", 0.7),
        # the same run under its old name: counted once
        ("icons_multisimilarity_none_old", "multisimilarity", "none", 1, "test", 0.7),
        ("icons_multisimilarity_sft_a", "multisimilarity", "sft", 0, "test", 0.1),
        ("icons_multisimilarity_none_c", "multisimilarity", "none", 0, "val", 0.1),
        ("icons_multisimilarity_none_d", "multisimilarity", "none", 9, "test", 0.1),
    ]
    with open(runs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            "name,dataset,loss,method,seed,split,recall_at_1,"
            "mean_average_precision_at_r,data_fingerprint".split(",")
        )
        for name, loss, method, seed, split, r1 in rows:
            w.writerow([name, "icons", loss, method, seed, split, r1, r1 / 2, ""])
    out = tmp_path / "out"
    argv = TINY_FAMILY_ARGS + ["--seeds", "0", "1", "--cache-dir"]
    argv += [str(tmp_path / "cache"), "--out", str(out), "--reuse", str(runs)]
    headroom.main(argv)
    with open(out / "headroom.csv") as f:
        table = {r["model"]: r for r in csv.DictReader(f)}
    assert list(table) == [
        "backbone features",
        "initial model",
        "trained baseline: multisimilarity",
    ]
    assert [table[m]["seeds"] for m in table] == ["1", "2", "2"]
    trained = table["trained baseline: multisimilarity"]
    assert float(trained["recall_at_1_mean"]) == pytest.approx(0.8)
    start = float(table["backbone features"]["recall_at_1_mean"])
    assert float(trained["gain_recall_at_1_over_features"]) == pytest.approx(
        0.8 - start
    )
    assert np.isclose(
        float(table["backbone features"]["gain_recall_at_1_over_features"]), 0
    )
    text = (out / "headroom.md").read_text()
    assert "icons: the trained rows do not record their data." in text
    assert headroom.data_line(
        "icons",
        pd.DataFrame({"dataset": ["icons"], "data_fingerprint": ["f"]}),
        pd.DataFrame({"dataset": ["icons"] * 2, "data_fingerprint": ["f", None]}),
    ) == (
        "icons: 1 of 2 trained rows record their data, and trained on the data "
        "evaluated here."
    )
    with pytest.raises(SystemExit):
        headroom.main(argv + ["--split", "val"])
