"""powerful-benchmarker 0.9.33 with pml-sft on PML 2.x: the compatibility fixes, the
loss factory, and a very short real experiment through its SingleExperimentRunner."""

import csv
import shutil
import sys
from pathlib import Path

import pytest
import torch

pb = pytest.importorskip("powerful_benchmarker")

from benchmarks.powerful_benchmarker import run as pb_run  # noqa: E402
from pml_sft.integrations import powerful_benchmarker as pb_sft  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(pb_run.CONFIG_FOLDER)


class TinyTrunk(torch.nn.Module):
    """A tiny convolutional trunk, so the experiment takes seconds on a CPU."""

    def __init__(self, width=8):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(2 * width, 10)  # replaced by Identity, sets the size

    def forward(self, x):
        return self.fc(self.features(x))


def test_fixes_are_idempotent_and_named():
    pb_sft.apply_compatibility_fixes()
    pb_sft.apply_compatibility_fixes()
    from pytorch_metric_learning.testers import BaseTester
    from pytorch_metric_learning.utils import common_functions as pml_cf

    assert pml_cf.Identity is torch.nn.Identity
    assert BaseTester.test._pml_sft_fixed
    assert set(pb_sft.COMPATIBILITY_FIXES) == {
        "Identity",
        "save_figures",
        "parent_name",
        "splits_to_eval",
        "total_iterations",
    }
    for fix in pb_sft.COMPATIBILITY_FIXES.values():
        assert fix.__doc__


def test_shipped_config_folder_is_complete():
    names = (CONFIGS / "config_foldernames.yaml").read_text()
    for folder in (
        "config_general",
        "config_models",
        "config_loss_and_miners",
        "config_optimizers",
        "config_transforms",
        "config_eval",
        "config_dataset",
        "config_factories",
    ):
        assert folder in names
        if folder != "config_loss_and_miners":  # its default is multisimilarity_sft
            assert (CONFIGS / folder / "default.yaml").exists()
    assert (CONFIGS / "config_loss_and_miners" / "multisimilarity_sft.yaml").exists()
    losses = {p.stem for p in (CONFIGS / "config_loss_and_miners").glob("*.yaml")}
    for loss in ("contrastive", "multisimilarity", "triplet", "arcface", "proxyanchor"):
        assert {f"{loss}_baseline", f"{loss}_translation", f"{loss}_sft"} <= losses
    for loss in ("contrastive", "multisimilarity", "triplet"):
        assert {
            f"{loss}_embedding_expansion",
            f"{loss}_symmetrical_synthesis",
            f"{loss}_densely_anchored_sampling",
        } <= losses
    for loss in ("proxyanchor", "normsoftmax"):
        assert {f"{loss}_baseline", f"{loss}_proxy_synthesis"} <= losses
    for dataset in ("default", "with_cars196", "with_sop", "with_emoji", "with_icons"):
        assert (CONFIGS / "config_dataset" / f"{dataset}.yaml").exists()


def test_loss_factory_nests_inner_loss_with_num_classes():
    runner = pb_run.make_runner()
    factory = pb_sft.SFTLossFactory(getter=runner.pytorch_getter)
    spec = {
        "FeatureTransformLoss": {
            "loss": {"ArcFaceLoss": {"embedding_size": 16}},
            "miner": {"MultiSimilarityMiner": {"epsilon": 0.1}},
            "augmenter": {
                "SphericalFeatureTransform": {
                    "centers": {"MovingAverageClassCenters": {"embedding_size": 16}},
                    "num_targets": 2,
                }
            },
            "warmup_iterations": 0,
        }
    }
    loss = factory.create(spec, kwargs={"num_classes": 7})
    assert loss.loss.W.shape == (16, 7)
    assert loss.augmenter.centers.num_classes == 7 and loss.num_targets == 2
    assert loss.collect_stats and loss.augmenter.collect_stats
    translation = factory.create(
        {
            "FeatureTranslationLoss": {
                "loss": {"ContrastiveLoss": {}},
                "num_targets": 1,
                "warmup_iterations": 0,
            }
        },
        kwargs={"num_classes": 7},
    )
    # (the translation wrapper runs the upstream step itself: no augmenter)
    assert type(translation).__name__ == "FeatureTranslationLoss"
    assert translation.transform == "translation"
    assert not hasattr(translation, "augmenter") and translation.collect_stats
    # the experiment's length sets the schedule unless the config sets one
    timed = factory.create(
        {"SFTLoss": {"loss": {"ContrastiveLoss": {}}}},
        kwargs={"num_classes": 7, "total_iterations": 100},
    )
    assert (timed.warmup_iterations, timed.ramp_iterations) == (50, 25)
    explicit = factory.create(
        {"SFTLoss": {"loss": {"ContrastiveLoss": {}}, "warmup_iterations": 3}},
        kwargs={"num_classes": 7, "total_iterations": 100},
    )
    assert (explicit.warmup_iterations, explicit.ramp_iterations) == (3, 0)
    plain = factory.create(
        {"ProxyAnchorLoss": {"embedding_size": 16}}, kwargs={"num_classes": 5}
    )
    assert plain.proxies.shape == (5, 16)


@pytest.mark.parametrize(
    "config",
    sorted(
        p.stem
        for p in (CONFIGS / "config_loss_and_miners").glob("*.yaml")
        if not p.stem.endswith("_baseline")
    ),
)
def test_every_augmenting_config_builds_trains_and_follows_the_schedule(config):
    # each shipped config, as the factory builds it for an experiment of 8
    # iterations: no augmentation for 4 steps, then the loss changes
    import yaml

    runner = pb_run.make_runner()
    pb_sft.register(runner)
    factory = pb_sft.SFTLossFactory(getter=runner.pytorch_getter)
    spec = yaml.safe_load(
        (CONFIGS / "config_loss_and_miners" / f"{config}.yaml").read_text()
    )
    loss = factory.create(
        spec["loss_funcs"]["metric_loss"],
        kwargs={"num_classes": 4, "total_iterations": 8},
    )
    assert (loss.warmup_iterations, loss.ramp_iterations) == (4, 2)
    torch.manual_seed(0)
    embedder = torch.nn.Linear(16, 128)
    x, y = torch.randn(16, 16), torch.arange(16) % 4
    augmented = []
    for _ in range(8):
        loss(embedder(x), y).backward()
        augmented.append(loss.num_augmented)
    assert augmented[:4] == [0] * 4 and augmented[-1] > 0, augmented


def test_short_experiment_end_to_end(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to fetch the emoji data")
    # a complete root config folder: the shipped one plus two small files
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    (configs / "config_models" / "tiny_test.yaml").write_text(
        "models:\n  trunk:\n    TinyTrunk:\n      width: 8\n  embedder:\n    MLP:\n      layer_sizes:\n        - 16\n"
    )
    (configs / "config_dataset" / "emoji_small.yaml").write_text(
        (configs / "config_dataset" / "with_emoji.yaml")
        .read_text()
        .replace("    image_size: 32", "    image_size: 32\n    max_classes: 48")
    )
    dataset_root = tmp_path / "datasets"
    downloads = REPO / ".cache" / "pml_sft" / "downloads"
    if downloads.exists():  # reuse the packages another test or run fetched
        shutil.copytree(downloads, dataset_root / "emoji" / "downloads")
    experiments = tmp_path / "experiments"
    monkeypatch.setattr(sys, "argv", ["run.py"])
    runner = pb_run.make_runner(
        dataset_root=str(dataset_root),
        root_experiment_folder=str(experiments),
        root_config_folder=str(configs),
    )
    runner.register("model", TinyTrunk)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "run.py",
            "--experiment_name",
            "sft_tiny",
            "--config_general",
            "[default,cpu_tiny]",
            "--config_dataset",
            "[emoji_small]",
            "--config_models",
            "[tiny_test]",
            "--config_optimizers",
            "[scratch_adam]",
            "--config_transforms",
            "[emoji]",
            "--config_eval",
            "[default,cpu]",
            "--config_loss_and_miners",
            "[multisimilarity_sft]",
        ],
    )
    runner.run()

    run_dirs = [
        p for p in (experiments / "sft_tiny").iterdir() if p.name.startswith("Test")
    ]
    assert len(run_dirs) == 1
    csvs = run_dirs[0] / "saved_csvs"
    # it trained ...
    assert (run_dirs[0] / "saved_models" / "trunk_1.pth").exists()
    history = list(csv.DictReader(open(csvs / "loss_histories.csv")))
    assert history and all(float(r["total_loss"]) > 0 for r in history)
    # ... evaluated with our Recall@K metrics ...
    accuracy_file = next(csvs.glob("accuracies_*VAL_vs_self.csv"))
    rows = list(csv.DictReader(open(accuracy_file)))
    for key in (
        "recall_at_1_level0",
        "recall_at_8_level0",
        "mean_average_precision_at_r_level0",
    ):
        assert 0 <= float(rows[-1][key]) <= 1
    assert float(rows[-1]["recall_at_8_level0"]) >= float(
        rows[-1]["recall_at_1_level0"]
    )
    # ... and logged the SFT statistics with record-keeper
    # the schedule came from the experiment, not the config: 1 epoch of 3 iterations
    # (cpu_tiny), so warm-up 3 // 2 = 1 and ramp 3 // 4 = 0; pb logs iteration 0,
    # which is in the warm-up
    sft_rows = list(csv.DictReader(open(csvs / "metric_loss_SFTLoss.csv")))
    assert sft_rows[0]["~iteration~"] == "0"
    assert sft_rows[0]["warmup_iterations"] == "1"
    assert sft_rows[0]["ramp_iterations"] == "0"
    assert float(sft_rows[0]["current_aug_weight"]) == 0.0
    assert int(sft_rows[0]["num_augmented"]) == 0
    # SFTLoss runs the augmentation step itself, so its own log holds the step's
    # statistics (no augmenter log)
    assert "mean_center_angle" in sft_rows[0]
    assert not list(csvs.glob("*SphericalFeatureTransform.csv"))
    assert list(
        (experiments / "sft_tiny" / "meta_logs" / "saved_csvs").glob(
            "MeanAggregator_*.csv"
        )
    )


def test_no_config_sets_the_schedule_by_hand():
    # the factory fills total_iterations from the experiment (epochs x iterations)
    for path in (CONFIGS / "config_loss_and_miners").glob("*.yaml"):
        text = path.read_text()
        assert "warmup_iterations" not in text and "ramp_iterations" not in text, path


def test_experiment_iterations():
    from types import SimpleNamespace

    def parser(epochs, trainer):
        split_manager = SimpleNamespace(
            curr_split_scheme_name="s1", get_dataset=lambda *a: list(range(1000))
        )
        args = SimpleNamespace(num_epochs_train=epochs, trainer=trainer)
        return SimpleNamespace(args=args, split_manager=split_manager)

    trainer = {"MetricLossOnly": {"iterations_per_epoch": 100, "batch_size": 32}}
    assert pb_sft.experiment_iterations(parser(10, trainer)) == 1000
    assert pb_sft.experiment_iterations(parser({"s1": 3, "s2": 5}, trainer)) == 300
    by_batches = {"MetricLossOnly": {"batch_size": 100}}
    assert pb_sft.experiment_iterations(parser(2, by_batches)) == 20
    assert pb_sft.experiment_iterations(parser(2.0, by_batches)) == 20  # a float
    zero = {"MetricLossOnly": {"batch_size": 100, "iterations_per_epoch": 0}}
    assert pb_sft.experiment_iterations(parser(2, zero)) == 20  # 0: the loader's
    assert pb_sft.experiment_iterations(parser(2, {"MetricLossOnly": {}})) is None
    assert pb_sft.experiment_iterations(parser(2.5, by_batches)) is None
    assert pb_sft.experiment_iterations(parser({"s2": 5}, trainer)) is None


def test_experiment_iterations_follow_the_sampler():
    # the shipped sampler (MPerClassSampler, m=4) sets the epoch's length, as in
    # PML's trainer: len(DataLoader(dataset, batch_size, sampler, drop_last=True))
    from types import SimpleNamespace

    from pytorch_metric_learning.samplers import MPerClassSampler

    labels = torch.arange(250).repeat_interleave(4)
    dataset = list(zip(torch.zeros(len(labels)), labels))
    sampler = MPerClassSampler(labels, m=4, length_before_new_iter=len(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=128, sampler=sampler, drop_last=True
    )
    split_manager = SimpleNamespace(
        curr_split_scheme_name="s1", get_dataset=lambda *a: dataset
    )
    args = SimpleNamespace(
        num_epochs_train=10, trainer={"MetricLossOnly": {"batch_size": 128}}
    )
    parser = SimpleNamespace(args=args, split_manager=split_manager, sampler=sampler)
    assert pb_sft.experiment_iterations(parser) == 10 * len(loader)
    # a sampler shorter than the data set: 40 iterations, not 10 * (1000 // 128)
    parser.sampler = MPerClassSampler(labels, m=4, length_before_new_iter=512)
    assert pb_sft.experiment_iterations(parser) == 10 * (512 // 128) == 40


def test_config_merges_that_would_collide_are_named():
    with pytest.raises(ValueError, match=r"'dataset' gets 2 classes, CUB200 \(default"):
        pb_run.check_config_merges(["--config_dataset", "[default,with_emoji]"])
    with pytest.raises(ValueError, match=r"'models.trunk' gets 2 classes"):
        pb_run.check_config_merges(["--config_models", "[default,resnet18_scratch]"])
    # what docs/powerful_benchmarker.md runs merges cleanly, and an override replaces the entry
    pb_run.check_config_merges(
        [
            "--config_general",
            "[default,cpu_tiny]",
            "--config_dataset",
            "[with_emoji]",
            "--config_models",
            "[resnet18_scratch]",
            "--config_eval",
            "[default,cpu]",
            "--config_loss_and_miners",
            "[multisimilarity_sft]",
        ]
    )
    pb_run.check_config_merges(
        ["--config_dataset", "[default,with_emoji]", "--dataset~OVERRIDE~", "{}"]
    )


def test_config_merges_check_nested_objects_and_both_flag_forms(tmp_path):
    # the wrappers' inner losses collide one level down (issue 30, point 10)
    pair = "[multisimilarity_sft,triplet_sft]"
    with pytest.raises(ValueError, match=r"'loss_funcs.metric_loss.loss' gets 2"):
        pb_run.check_config_merges(["--config_loss_and_miners", pair])
    with pytest.raises(ValueError, match=r"'dataset' gets 2 classes"):
        pb_run.check_config_merges(["--config_dataset=[default,with_emoji]"])
    folder = tmp_path / "config_general"
    folder.mkdir()
    (folder / "listed.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        pb_run.check_config_merges(["--config_general", "[listed]"], tmp_path)
