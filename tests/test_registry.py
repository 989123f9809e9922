"""The registry of losses and methods: every consumer is built from it."""

import argparse
from pathlib import Path

import pytest
import torch

import pml_sft
from benchmarks import family, family_tuning, registry, train

CONFIGS = (
    Path(__file__).resolve().parents[1]
    / "benchmarks/powerful_benchmarker/configs/config_loss_and_miners"
)
HAND_WRITTEN = {"multisimilarity_sft_ema_centers.yaml"}


def test_the_powerful_benchmarker_configs_are_generated(tmp_path):
    written = registry.write_pb_configs(tmp_path)
    names = {p.name for p in written}
    committed = {p.name for p in CONFIGS.glob("*.yaml")}
    assert committed == names | HAND_WRITTEN
    for path in written:
        assert path.read_text() == (CONFIGS / path.name).read_text(), path.name


PAIRS = [(loss, m) for m, entry in registry.METHODS.items() for loss in entry.losses]


@pytest.mark.parametrize("loss,method", PAIRS)
def test_every_compared_pair_builds_and_augments(loss, method):
    cfg = train.RunConfig.make(loss=loss, method=method, embedding_size=32)
    generator = torch.Generator().manual_seed(0)
    objective, miner = registry.build_objective(cfg, 8, 10, generator)
    assert miner is None  # the wrapper mines the enlarged batch itself
    wrapper = registry.METHODS[method].wrapper
    assert isinstance(objective, pml_sft.losses.checked_loss.CheckedLoss)
    if wrapper in ("FeatureTranslationLoss", "SFTLoss"):  # with the run's centres
        assert isinstance(objective, pml_sft.FeatureTransformLoss)
    else:
        assert type(objective).__name__ == wrapper
    torch.manual_seed(0)
    embeddings = torch.randn(32, 32, requires_grad=True)
    labels = torch.arange(8).repeat_interleave(4)
    objective(embeddings, labels).backward()
    assert objective.num_augmented > 0  # warmup 0: it augments from the first call


def test_a_new_method_is_one_entry(monkeypatch):
    entry = registry.Method(
        "Embedding Expansion, 3 points",
        "EmbeddingExpansionLoss",
        {"num_points": 2},
        ({"num_points": 3},) * 3,
        ("contrastive",),
    )
    monkeypatch.setitem(registry.METHODS, "ee3", entry)
    # the harness takes it: its options on the command line, its run, its objects
    parser = train.add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--method", "ee3", "--num-points", "3"])
    cfg = train.RunConfig.make(**train.settings_from_args(args, parser, ["ee3"]))
    objective, _ = registry.build_objective(cfg, 8, 10, None)
    assert isinstance(objective, pml_sft.EmbeddingExpansionLoss)
    assert objective.augmenter.num_points == 3
    # the comparison, the tuning and powerful-benchmarker's config
    assert "ee3" in registry.family_methods("contrastive")
    assert family_tuning.method_settings("ee3", 0.1)[0] == {"lr": 0.1, "num_points": 3}
    body = registry.pb_config("contrastive", "ee3")["loss_funcs"]["metric_loss"]
    assert body["EmbeddingExpansionLoss"]["num_points"] == 2
    assert registry.pb_file_name("contrastive", "ee3") == (
        "contrastive_embedding_expansion_3_points.yaml"
    )


def test_the_family_reads_the_registry():
    assert family.FAMILY == {
        loss: registry.family_methods(loss) for loss in registry.FAMILY_LOSSES
    }
    assert family.LOSS_LR == {k: v.lr for k, v in registry.LOSSES.items()}
    assert family.METHOD_NAMES["ps"] == "Proxy Synthesis"


def test_a_method_without_a_miner_refuses_a_loss_with_one():
    cfg = train.RunConfig.make(loss="multisimilarity", method="ps")
    with pytest.raises(ValueError, match="takes no miner"):
        registry.build_objective(cfg, 8, 10, None)


def setting_outcome(method, loss, setting):
    """(lr factor, loss value, gradient norm) of one augmenting step of the run
    objective a tuning setting builds: one epoch of one iteration, augmenting from
    the start (so a share or a weight shows), a fixed batch and fixed draws."""
    setting = dict(setting)
    lr = setting.pop("lr_factor", 1.0)
    cfg = train.RunConfig.make(loss=loss, method=method, epochs=1, **setting)
    torch.manual_seed(0)
    objective, miner = registry.build_objective(
        cfg, 8, 1, torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, cfg.embedding_size, generator=g, requires_grad=True)
    y = torch.arange(32) % 8
    value = objective(x, y) if miner is None else objective(x, y, miner(x, y))
    value.backward()
    return lr, round(float(value), 6), round(float(x.grad.norm()), 6)


def test_every_tuning_setting_changes_the_step_on_every_loss():
    # three settings that train alike tune nothing (SEE's first grid, over the
    # weight of a separate term MultiSimilarity does not have, ran three identical
    # runs); each setting is built as the harness builds it and one step is taken
    for name, method in registry.METHODS.items():
        if method.wrapper is None:
            continue
        for loss in method.losses:
            outcomes = {setting_outcome(name, loss, s) for s in method.grid}
            assert len(outcomes) == len(method.grid) == 3, (name, loss, outcomes)


def test_a_proxy_only_option_is_refused_where_there_are_no_proxies():
    with pytest.raises(ValueError, match="act on a proxy loss's proxies"):
        train.RunConfig.make(loss="multisimilarity", method="see", see_weight=0.4)
    with pytest.raises(ValueError, match="loss 'arcface' has none"):
        train.RunConfig.make(loss="arcface", method="see", see_weight=0.4)
    cfg = train.RunConfig.make(loss="arcface", method="see")  # class weights
    built, _ = registry.build_objective(cfg, 8, 10, None)
    assert built.aug_weight is None
    cfg = train.RunConfig.make(loss="proxyanchor", method="see", see_weight=0.4)
    assert registry.build_objective(cfg, 8, 10, None)[0].aug_weight == 0.4
