"""Choosing each arm's setting on validation classes: the rule, the budget, and a
tiny end-to-end tuning on fake icons whose choices drive the test comparison."""

import csv
import json
from pathlib import Path

import pytest

from benchmarks import family, family_tuning, registry, train

from .helpers import TINY_FAMILY_ARGS, fake_emoji_data


def test_the_rule_takes_the_highest_mean_and_the_first_of_ties():
    assert family_tuning.choose([0.50, 0.61, 0.61]) == 1
    assert family_tuning.choose([0.61, 0.50, 0.61]) == 0


def test_every_arm_gets_three_settings_and_the_default_first():
    for method, settings in family_tuning.METHOD_SETTINGS.items():
        assert len(settings) == 3
    assert family_tuning.baseline_settings("triplet")[0] == {
        "lr": family.LOSS_LR["triplet"]
    }
    defaults = registry.method_options()
    assert family_tuning.method_settings("ee", 0.01)[0] == {
        "lr": 0.01,
        "num_points": defaults["num_points"],
    }
    assert family_tuning.method_settings("ps", 0.01)[0] == {
        "lr": 0.01,
        "ps_alpha": defaults["ps_alpha"],
        "ps_mu": defaults["ps_mu"],
    }
    # the method without options of its own spends its budget on the learning rate
    assert [s["lr"] for s in family_tuning.method_settings("ss", 0.01)] == [
        0.01,
        0.005,
        0.02,
    ]


def test_an_option_of_another_method_is_refused(capsys):
    with pytest.raises(
        ValueError, match=r"method 'sft' does not take \['num_points'\]"
    ):
        train.RunConfig(method="sft", options={"num_points": 4}).check()
    with pytest.raises(SystemExit):
        train.main(["--method", "sft", "--num-points", "4"])
    assert (
        "--num-points is an option of ['ee'], not of ['sft']" in capsys.readouterr().err
    )
    with pytest.raises(TypeError, match="unknown run setting 'num_pionts'"):
        train.RunConfig.make(method="ee", num_pionts=4)
    # a comparison's shared option reaches the methods that take it, only them
    cfg = train.RunConfig.make(method="none", loss="proxyanchor", ps_mu=0.5)
    assert cfg.options == {}
    cfg = train.RunConfig.make(method="ps", loss="proxyanchor", ps_mu=0.5)
    assert cfg.method_options() == {"ps_alpha": 0.4, "ps_mu": 0.5}


def test_tuning_end_to_end_then_the_comparison_takes_its_choices(tmp_path, monkeypatch):
    fake = fake_emoji_data(20, 6, 16)
    monkeypatch.setattr(train.icon_themes, "prepare", lambda *a, **k: fake)
    monkeypatch.setitem(family.FAMILY, "multisimilarity", ("sft", "ss"))
    monkeypatch.setitem(family.FAMILY, "normsoftmax", ("ps",))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "tuning"
    argv = TINY_FAMILY_ARGS + cache + ["--seeds", "100", "--out", str(out)]
    # a part: 2 of the first baseline's 3 runs, so nothing is chosen yet
    family_tuning.main(argv + ["--max-runs", "2"])
    assert json.loads((out / "chosen.json").read_text()) == {}
    with open(out / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    with pytest.raises(ValueError, match="no entry for icons, multisimilarity"):
        family.main(
            TINY_FAMILY_ARGS
            + cache
            + ["--seeds", "0", "--out", str(tmp_path / "cmp")]
            + ["--chosen", str(out / "chosen.json")]
        )
    family_tuning.main(argv)  # the rest: 6 baseline runs, then 3 methods x 3
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 6 + 9 and {r["split"] for r in runs} == {"val"}
    with open(out / "tuning.csv") as f:
        rows = list(csv.DictReader(f))
    chosen = json.loads((out / "chosen.json").read_text())
    for loss, methods in (("multisimilarity", ("none", "sft", "ss")),):
        for method in methods:
            mine = [r for r in rows if r["loss"] == loss and r["method"] == method]
            assert len(mine) == 3 and sum(r["chosen"] == "True" for r in mine) == 1
            best = max(mine, key=lambda r: float(r["recall_at_1_mean"]))
            assert best["chosen"] == "True"
            assert json.loads(best["setting"]) == chosen["icons"][loss][method]
    for loss in ("multisimilarity", "normsoftmax"):
        lr = chosen["icons"][loss]["none"]["lr"]
        assert lr in [s["lr"] for s in family_tuning.baseline_settings(loss)]
        for method in family.FAMILY[loss]:
            if method != "ss":  # the methods run at their loss's chosen rate
                assert chosen["icons"][loss][method]["lr"] == lr
    # the test comparison takes the chosen settings, on test classes
    cmp_out = tmp_path / "cmp"
    family.main(
        TINY_FAMILY_ARGS
        + cache
        + ["--seeds", "0", "--out", str(cmp_out)]
        + ["--chosen", str(out / "chosen.json")]
    )
    for run_dir in (d for d in cmp_out.iterdir() if d.is_dir()):
        config = json.loads((run_dir / "result.json").read_text())["config"]
        config.update(config.pop("options"))
        assert config["split"] == "test"
        setting = chosen["icons"][config["loss"]][config["method"]]
        assert {k: config[k] for k in setting} == setting
    assert "chosen on validation classes" in (cmp_out / "summary.md").read_text()


COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks/results/family_tuning"


def committed_tuning(methods=None):
    """``tune`` over the committed tuning rows (found by their old names); returns
    the configs it would train, and its choices."""
    args = family.build_parser("", "val").parse_args([])
    base = family.base_options(args)
    finished, wanted = {}, []
    rows_csv = [COMMITTED / "runs.csv"]

    def train(configs):
        finished.update(family.committed_results(configs, rows_csv, not finished))
        wanted.extend(c for c in configs if c.name() not in finished)

    _, chosen = family_tuning.tune(
        base,
        ["emoji", "icons"],
        list(family.FAMILY),
        [100, 101],
        finished,
        train,
        methods,
    )
    return wanted, chosen, finished


def test_the_committed_tuning_rows_are_found_and_give_the_committed_choices():
    wanted, chosen, finished = committed_tuning()
    with open(COMMITTED / "runs.csv", newline="") as f:
        assert len(finished) == len(list(csv.DictReader(f)))  # every row found
    with open(COMMITTED / "chosen.json") as f:
        committed = json.load(f)
    for dataset, losses in committed.items():
        for loss, methods in losses.items():
            for method, setting in methods.items():
                assert chosen[dataset][loss][method] == setting
    # what is left to train: the arms of the methods tuned since, 3 settings x 2 seeds
    arms = {(c.dataset, c.loss, c.method) for c in wanted}
    assert {m for _, _, m in arms} <= {"see", "mixup", "cov", "das"}
    assert len(wanted) == 6 * len(arms)


def test_tuning_only_some_methods():
    wanted, chosen, _ = committed_tuning(["see"])
    assert {c.method for c in wanted} <= {"see"}
    assert {c.loss for c in wanted} <= set(registry.METHODS["see"].losses)
    # the icons arms are committed; only SEE's choice is made besides the baseline's
    assert set(chosen["icons"]["multisimilarity"]) == {"none", "see"}
    assert set(chosen["icons"]["triplet"]) == {"none"}
