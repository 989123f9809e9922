"""The fast tier of the benchmarks: cached inputs of the last blocks, one copy per
epoch, full-pass centres refitted by the training loop; and the study preset."""

import json

import pytest
import torch
from pytorch_metric_learning.utils import common_functions as c_f

from benchmarks import compare, diagnostics, report, train
from pml_sft.contrib import DatasetClassCenters

from .helpers import fake_emoji_data


@pytest.fixture
def fake_emoji(monkeypatch):
    fake = fake_emoji_data(20, 6, 32)
    monkeypatch.setattr(train.emoji, "prepare", lambda *args, **kwargs: fake)
    return fake


def _config(tmp_path, **kwargs):
    options = dict(
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=32,
        train_from_block=15,
        cached_copies=2,
        epochs=3,
        eval_every=1,
        batch_size=16,
        progress=False,
        split="val",
        cache_dir=str(tmp_path / "cache"),
    )
    options.update(kwargs)
    return train.RunConfig.make(**options)


def test_cached_inputs_equal_the_frozen_blocks(tmp_path, fake_emoji):
    cfg = _config(tmp_path)
    train_set, eval_set = train.build_datasets(cfg)
    trunk = train.build_trunk("efficientnet_lite0", pretrained=True)
    head, cached_train, cached_eval = train.cached_datasets(
        cfg, trunk, train_set, eval_set, torch.device("cpu")
    )
    assert cached_train.features.shape[:2] == (2, len(train_set))
    assert cached_eval.features.shape[:2] == (1, len(eval_set))
    trunk.eval()
    with torch.no_grad():
        x = torch.stack([eval_set[i][0] for i in range(4)])
        expected = trunk.forward_to(x, 15)
        assert torch.allclose(cached_eval.features[0, :4], expected, atol=1e-5)
        # the head on cached inputs is the rest of the network
        assert torch.allclose(head(cached_eval.features[0, :4]), trunk(x), atol=1e-4)
    # the copies differ (random shifts) and each epoch reads one of them
    assert not torch.equal(cached_train.features[0], cached_train.features[1])
    cached_train.set_epoch(1)
    assert torch.equal(cached_train[3][0], cached_train.features[1, 3])
    cached_train.set_epoch(2)
    assert torch.equal(cached_train[3][0], cached_train.features[0, 3])
    # a second run reads the cache instead of recomputing it
    files = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    train.cached_datasets(cfg, trunk, train_set, eval_set, torch.device("cpu"))
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_fast_tier_run_trains_only_the_head(tmp_path, fake_emoji, monkeypatch):
    fits = []
    original_fit = DatasetClassCenters.fit

    def recording_fit(self, embeddings, labels):
        fits.append(len(labels))
        return original_fit(self, embeddings, labels)

    monkeypatch.setattr(DatasetClassCenters, "fit", recording_fit)
    cfg = _config(
        tmp_path, method="sft", centers="dataset", center_every=2, loss="contrastive"
    )
    monkeypatch.setattr(c_f, "COLLECT_STATS", False)
    result = train.run(cfg, tmp_path / "runs")
    run_dir = tmp_path / "runs" / cfg.name()
    assert not c_f.COLLECT_STATS  # PML's process-wide flag is restored after a run
    logs = run_dir / "logs"
    stats = (logs / "metric_loss_FeatureTransformLoss.csv").read_text()
    assert "share_nearest_target" in stats.splitlines()[0]  # collected during it
    assert not list(logs.glob("*parameters*"))  # no proxies or weights copied
    assert result["iterations"] > 0 and result["curves"]["recall_at_1"][-1] is not None
    assert fits == [result["num_train_samples"]] * 2  # epochs 1 and 3
    saved = torch.load(run_dir / "model.pt")
    # the trained part only: the last block (the head's block 0) and the head conv
    prefixes = {k.rsplit(".", 1)[0] for k in saved["trunk"]}
    assert {p.split(".")[0] for p in prefixes} == {"blocks", "conv_head", "bn_head"}
    assert {p.split(".")[1] for p in prefixes if p.startswith("blocks")} == {"0"}
    # the diagnostics read the trained head back onto the cached frozen blocks
    diagnostics.main(
        ["--run", str(run_dir), "--out", str(tmp_path / "diag"), "--min-samples", "2"]
    )
    report = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    assert report["num_samples"] == result["num_eval_samples"]
    _, head, _, _ = diagnostics.load_run(run_dir)
    assert torch.equal(
        head.state_dict()["conv_head.weight"], saved["trunk"]["conv_head.weight"]
    )
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        train.run(
            train.RunConfig(
                backbone="small_cnn",
                train_from_block=3,
                progress=False,
                split="val",
                cache_dir=str(tmp_path / "cache"),
            ),
            tmp_path / "small",
        )


def test_study_preset_selects_the_best_validation_epoch(
    tmp_path, fake_emoji, monkeypatch
):
    out = tmp_path / "study"
    plotted = []
    plot_curves = report.plot_curves

    def recording_plot_curves(results, path, losses, series):
        plotted.append([series(r) for r in results])
        return plot_curves(results, path, losses, series)

    monkeypatch.setattr(report, "plot_curves", recording_plot_curves)
    argv = [
        "--preset", "study", "--study-losses", "contrastive", "--seeds", "0",
        "--variants", "first", "synthetic only as negatives", "--workers", "1",
        "--backbone", "efficientnet_lite0", "--pretrained", "true",
        "--image-size", "32", "--train-from-block", "15", "--cached-copies", "1",
        "--epochs", "2", "--eval-every", "1", "--batch-size", "16",
        "--select", "best-epoch", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out),
    ]  # fmt: skip
    compare.main(argv)
    summary = (out / "summary.md").read_text()
    assert "best validation epoch" in summary
    for label in ("baseline", "first step (joint loss", "synthetic only as negatives"):
        assert label in summary
    runs = (out / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 1 + 2 * 2  # header, none, 2 variants x (translation, sft)
    # one learning curve per variant and method, in the table's order
    assert (out / "learning_curves.png").stat().st_size > 0
    curves = (out / "learning_curves.csv").read_text().splitlines()
    assert curves[0] == "loss,series,epoch,recall_at_1_mean"
    assert len(curves) == 1 + 5 * 2  # 5 lines x 2 evaluated epochs
    assert plotted == [
        [
            "baseline (no augmentation)",
            "first step (joint loss, any role) (sft)",
            "first step (joint loss, any role) (translation)",
            "synthetic only as negatives (sft)",
            "synthetic only as negatives (translation)",
        ]
    ]
    results = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    # provenance: every run records the commit it was trained at
    assert {r["commit"] for r in results} == {train.git_commit()}
    assert f"runs trained at {train.git_commit()} (5)" in summary
    for r in results:
        best, epoch = compare.best_epoch_metrics(r)
        assert best["recall_at_1"] == max(r["curves"]["recall_at_1"])
        assert epoch in r["curves"]["epoch"]


def test_learning_rate_per_loss(tmp_path, fake_emoji):
    out = tmp_path / "cmp"
    argv = [
        "--losses", "contrastive", "multisimilarity", "--methods", "none",
        "--seeds", "0", "--workers", "1", "--loss-lr", "contrastive=0.5",
        "--lr", "0.25", "--backbone", "efficientnet_lite0", "--pretrained", "true",
        "--image-size", "32", "--train-from-block", "16", "--cached-copies", "1",
        "--epochs", "1", "--batch-size", "16", "--split", "val",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
    ]  # fmt: skip
    compare.main(argv)
    lrs = {
        r["config"]["loss"]: r["config"]["lr"]
        for r in (json.loads(p.read_text()) for p in out.glob("*/result.json"))
    }
    assert lrs == {"contrastive": 0.5, "multisimilarity": 0.25}
    with pytest.raises(SystemExit):
        compare.main(argv[:-2] + ["--loss-lr", "nosuchloss=1", "--out", str(out)])


def test_share_nearest_target_reads_the_transform_logs(tmp_path, capsys):
    from benchmarks import share_nearest_target

    for seed, values in ((0, ["0", "0.5", "1.0"]), (1, ["0", "0.25", "0.75"])):
        cfg = train.RunConfig.make(seed=seed, method="sft", num_targets=2)
        logs = tmp_path / cfg.name() / "logs"
        logs.mkdir(parents=True)
        (logs.parent / "config.json").write_text(json.dumps(cfg.identity()))
        rows = ["~iteration~,num_augmented,share_nearest_target"]
        rows += [f"{i},{0 if v == '0' else 128},{v}" for i, v in enumerate(values)]
        (logs / "a_transform_SphericalFeatureTransform.csv").write_text("\n".join(rows))
    result = share_nearest_target.shares(tmp_path)
    variant = "emoji_multisimilarity_sft_num_targets=2"
    assert result == {variant: [(0.75, 0.5, 1.0), (0.5, 0.25, 0.75)]}
    share_nearest_target.main([str(tmp_path)])
    assert "runs=2 mean share 0.625 first 0.375 last 0.875" in capsys.readouterr().out


def test_study_variants_a_method_cannot_take_are_left_out(tmp_path):
    args = compare.build_parser().parse_args(
        ["--preset", "study", "--methods", "none", "sft", "ee", "--seeds", "0"]
    )
    base, loss_lr = compare.base_settings(args, compare.build_parser())
    configs, labels = compare.preset_configs(args, base, loss_lr)
    names = [c.name() for c in configs]
    assert len(names) == len(set(names))  # no run listed twice
    ee = [c for c in configs if c.method == "ee"]
    assert ee and all(not c.options.keys() - {"num_points"} for c in ee)


def test_share_nearest_target_keeps_schedules_apart(tmp_path):
    from benchmarks import share_nearest_target

    names = set()
    for options in ({}, {"warmup_epochs": 10.0, "ramp_epochs": 5.0}):
        cfg = train.RunConfig.make(method="sft", **options)
        (tmp_path / cfg.name()).mkdir()
        (tmp_path / cfg.name() / "config.json").write_text(json.dumps(cfg.identity()))
        names.add(share_nearest_target.variant_name(tmp_path / cfg.name()))
    assert len(names) == 2 and any("warmup_epochs=10.0" in n for n in names)
