"""The paired family comparison: its summary statistics, and one tiny end-to-end
run on fake icon data (both cheap)."""

import csv
import dataclasses
import math

import numpy as np
import pytest

from benchmarks import family, report, train
from benchmarks.train import RunConfig

from .helpers import TINY_FAMILY_ARGS, fake_emoji_data


def fake_result(loss, method, seed, r1, mapr, dataset="icons"):
    return {
        "name": f"{dataset}-{loss}-{method}-{seed}",
        "config": dict(
            dataset=dataset, loss=loss, method=method, seed=seed, split="test"
        ),
        "metrics": {"recall_at_1": r1, "mean_average_precision_at_r": mapr},
    }


def test_paired_differences_and_t_intervals():
    base = [0.60, 0.62, 0.58, 0.61]
    gain = [0.01, 0.03, 0.02, 0.00]
    results = [
        fake_result("contrastive", "none", s, b, b / 2) for s, b in enumerate(base)
    ]
    results += [
        fake_result("contrastive", "ee", s, b + g, b / 2 - g)
        for s, (b, g) in enumerate(zip(base, gain))
    ]
    results.append(fake_result("contrastive", "ss", 9, 0.7, 0.3))  # no baseline seed 9
    rows = {r["method"]: r for r in family.paired_summary(results)}
    ee = rows["ee"]
    d = np.array(gain)
    half = 3.182446305284263 * d.std(ddof=1) / math.sqrt(4)  # t(0.975, 3)
    assert ee["paired_seeds"] == 4 and ee["seeds"] == 4
    assert ee["delta_recall_at_1_mean"] == pytest.approx(d.mean())
    assert ee["delta_recall_at_1_ci_low"] == pytest.approx(d.mean() - half)
    assert ee["delta_recall_at_1_ci_high"] == pytest.approx(d.mean() + half)
    assert ee["delta_mean_average_precision_at_r_mean"] == pytest.approx(-d.mean())
    assert report.verdict(ee) == "no difference"  # the interval contains 0 here
    assert rows["ss"]["paired_seeds"] == 0 and math.isnan(
        rows["ss"]["delta_recall_at_1_mean"]
    )
    assert math.isnan(rows["none"]["delta_recall_at_1_mean"])
    assert ee["recall_at_1_std"] == pytest.approx(np.std(np.add(base, gain), ddof=1))
    results.append(fake_result("contrastive", "none", 0, 0.5, 0.2, dataset="emoji"))
    table = family.verdict_table(family.paired_summary(results)).splitlines()
    assert table[0] == "| loss | method | emoji | icons |"
    assert table[2] == (
        f"| contrastive | Embedding Expansion | not run | {100 * d.mean():+.2f} "
        "(no difference) |"
    )
    assert table[3] == "| contrastive | Symmetrical Synthesis | not run | - |"


def test_runs_on_different_data_or_cpus_are_not_paired():
    results = [fake_result("triplet", "none", s, 0.5, 0.2) for s in range(3)]
    results += [fake_result("triplet", "sft", s, 0.6, 0.3) for s in range(3)]
    prints = ["aaa", "aaa", "bbb", None, "aaa", "ccc"]  # seed 0: old row, no print
    for r, p in zip(results, prints):
        r["data_fingerprint"] = p
    sft = {r["method"]: r for r in family.paired_summary(results)}["sft"]
    assert sft["paired_seeds"] == 2 and sft["unpaired_seeds"] == 1
    assert sft["delta_recall_at_1_mean"] == pytest.approx(0.1)
    results[1]["cpu"], results[4]["cpu"] = "X, AVX512", "X, AVX2"  # seed 1
    sft = {r["method"]: r for r in family.paired_summary(results)}["sft"]
    assert sft["paired_seeds"] == 1 and sft["unpaired_seeds"] == 2


def test_fingerprint_follows_the_data():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    a = train.ImageTensorDataset(images, [0, 0, 1, 1], train=False)
    images[0, 0, 0, 0] = 1
    b = train.ImageTensorDataset(images, [0, 0, 1, 1], train=False)
    c = train.ImageTensorDataset(images, [0, 1, 1, 1], train=False)
    prints = {train.fingerprint(d) for d in (a, b, c)}
    assert len(prints) == 3
    assert train.fingerprint(b) == train.fingerprint(
        train.ImageTensorDataset(images.copy(), [0, 0, 1, 1], train=False)
    )


def test_family_comparison_end_to_end_on_fake_icons(tmp_path, monkeypatch):
    fake = fake_emoji_data(16, 6, 16)
    monkeypatch.setattr(train.icon_themes, "prepare", lambda *a, **k: fake)
    # fewer runs
    monkeypatch.setitem(family.FAMILY, "multisimilarity", ("sft", "ee", "ss"))
    monkeypatch.setitem(
        family.FAMILY, "normsoftmax", ("translation", "sft", "ps", "see")
    )
    out = tmp_path / "cmp"
    argv = TINY_FAMILY_ARGS + ["--seeds", "0", "1", "--cache-dir"]
    argv += [str(tmp_path / "cache"), "--out", str(out), "--max-runs", "5"]
    family.main(argv)  # a part: 5 of the 18 runs
    with open(out / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert "still to run" in (out / "summary.md").read_text()
    family.main(argv[:-2])  # the rest; the first 5 are reused
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["loss"], r["method"]) for r in rows} == {
        ("multisimilarity", m) for m in ("none", "sft", "ee", "ss")
    } | {("normsoftmax", m) for m in ("none", "translation", "sft", "ps", "see")}
    for r in rows:
        assert r["dataset"] == "icons" and r["split"] == "test" and r["seeds"] == "2"
        if r["method"] != "none":
            assert (
                float(r["delta_recall_at_1_ci_low"])
                <= float(r["delta_recall_at_1_mean"])
                <= float(r["delta_recall_at_1_ci_high"])
            )
    assert (out / "paired_differences.png").exists()
    with open(out / "sft_vs_peers.csv") as f:
        peers = {
            (r["loss"], r["reference"], r["paired_seeds"]) for r in csv.DictReader(f)
        }
    assert peers == {("normsoftmax", "translation", "2"), ("normsoftmax", "see", "2")}
    assert "## SFT against its peers" in (out / "summary.md").read_text()
    with open(out / "runs.csv") as f:  # one data set, one cache: one fingerprint
        rows_run = list(csv.DictReader(f))
    prints = {r["data_fingerprint"] for r in rows_run}
    assert len(prints) == 1 and len(prints.pop()) == 12
    assert {r["cpu"] for r in rows_run} == {train.cpu_description()}
    # the paired runs share their initialisation and batches until augmentation:
    # with the schedule at half of 2 epochs, epoch 1's training loss is the same
    results = {r.name: r for r in (out).iterdir() if r.is_dir()}
    none = [n for n in results if "_normsoftmax_none_" in n and "_seed=0_" in n]
    ps = [n for n in results if "_normsoftmax_ps_" in n and "_seed=0_" in n]
    import json

    first = [
        json.loads((results[n[0]] / "result.json").read_text())["curves"]["train_loss"][
            0
        ]
        for n in (none, ps)
    ]
    assert first[0] == pytest.approx(first[1], rel=1e-6)

    # a new machine: the run directories are gone, the committed runs.csv is read
    # back; nothing is trained again and the summary is the same
    committed = tmp_path / "committed_runs.csv"
    committed.write_text((out / "runs.csv").read_text())
    summary = (out / "summary.csv").read_text()
    fresh = tmp_path / "fresh"
    reuse = [a if a != str(out) else str(fresh) for a in argv[:-2]]
    family.main(reuse + ["--reuse", str(committed), "--max-runs", "0"])
    assert (fresh / "summary.csv").read_text() == summary
    assert "still to run" not in (fresh / "summary.md").read_text()
    assert not [d for d in fresh.iterdir() if d.is_dir()]  # nothing trained
    with open(fresh / "runs.csv") as f:
        assert {r["commit"] for r in csv.DictReader(f)} == {
            r["commit"] for r in csv.DictReader(committed.open())
        }


def test_incomplete_blocks_from_another_cpu_are_set_aside(tmp_path):
    configs = family.family_configs({}, ["icons"], ["contrastive"], [0, 1, 2])
    by_block = {}
    for c in configs:
        by_block.setdefault(c.seed, []).append(c)
    n = len(by_block[0])
    assert n >= 3 and all(len(b) == n for b in by_block.values())

    def result(c, cpu):
        return {
            **fake_result(c.loss, c.method, c.seed, 0.5, 0.2),
            "name": c.name(),
            "train_seconds": 1.0,
            "cpu": cpu,
        }

    finished = {}
    for c in by_block[0][:2]:  # seed 0: incomplete, trained elsewhere: set aside
        finished[c.name()] = result(c, "Other CPU, AVX2")
    for c in by_block[1]:  # seed 1: complete, trained elsewhere: kept
        finished[c.name()] = result(c, "Other CPU, AVX2")
    for i, c in enumerate(by_block[2][:-1]):  # seed 2: incomplete, here or no cpu
        finished[c.name()] = result(c, None if i == 0 else "This CPU, AVX512")
    stale = family.partial_blocks_from_elsewhere(configs, finished, "This CPU, AVX512")
    assert sorted(stale) == sorted(c.name() for c in by_block[0][:2])
    mixed = by_block[2][-1]  # a run from elsewhere in seed 2's incomplete block:
    finished[mixed.name()] = result(mixed, "Other CPU, AVX2")  # it trains again,
    gap = by_block[2][1]  # the runs trained here stay
    finished.pop(gap.name())
    assert sorted(
        family.partial_blocks_from_elsewhere(configs, finished, "This CPU, AVX512")
    ) == sorted([c.name() for c in by_block[0][:2]] + [mixed.name()])
    finished[gap.name()] = result(gap, "This CPU, AVX512")  # complete again: kept
    assert family.partial_blocks_from_elsewhere(
        configs, finished, "This CPU, AVX512"
    ) == [c.name() for c in by_block[0][:2]]

    (tmp_path / stale[0]).mkdir()
    (tmp_path / stale[0] / "result.json").write_text("{}")
    family.set_aside(stale, finished, tmp_path)
    assert not any(s in finished for s in stale) and len(finished) == 2 * n
    assert (tmp_path / "superseded" / stale[0] / "result.json").exists()
    assert not (tmp_path / stale[0]).exists()
    with open(tmp_path / "superseded_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == sorted(stale)
    assert {r["cpu"] for r in rows} == {"Other CPU, AVX2"}
    last = by_block[1][0].name()  # a second set-aside appends to the csv
    row = finished[last]
    family.set_aside([last], finished, tmp_path)
    with open(tmp_path / "superseded_runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    # a later call reads the committed row again and sets it aside again: once in
    # the csv; a run directory set aside twice replaces the first
    finished[last] = row
    (tmp_path / last).mkdir()
    (tmp_path / last / "result.json").write_text("{}")
    (tmp_path / "superseded" / last).mkdir()
    family.set_aside([last], finished, tmp_path)
    with open(tmp_path / "superseded_runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "superseded" / last / "result.json").exists()


def test_device_description_names_the_gpu_on_cuda(monkeypatch):
    assert train.device_description("cpu") == train.cpu_description()
    monkeypatch.setattr(train.torch.cuda, "get_device_name", lambda d: f"GPU {d}")
    assert train.device_description("cuda:1") == (
        f"GPU cuda:1, CUDA {train.torch.version.cuda}"
    )


def test_resuming_compares_runs_with_the_configured_device(tmp_path, monkeypatch):
    # a run trained on CUDA records the GPU, so resuming on CUDA must compare
    # against the GPU, not this machine's CPU (else its blocks are trained again)
    asked = []

    class Stop(Exception):
        pass

    def here(device):
        asked.append(device)
        raise Stop

    monkeypatch.setattr(family, "device_description", here)
    with pytest.raises(Stop):
        family.main(
            ["--datasets", "icons", "--seeds", "0", "--device", "cuda:0"]
            + ["--out", str(tmp_path / "cmp")]
        )
    assert asked == ["cuda:0"]


def test_sft_against_translation_is_paired_by_seed():
    trans = [0.60, 0.62, 0.58]
    gain = [0.02, 0.03, 0.04]  # SFT minus translation, per seed
    results = [fake_result("triplet", "none", s, 0.5, 0.2) for s in range(3)]
    results += [
        fake_result("triplet", "translation", s, t, t / 2) for s, t in enumerate(trans)
    ]
    results += [
        fake_result("triplet", "sft", s, t + g, t / 2)
        for s, (t, g) in enumerate(zip(trans, gain))
    ]
    results.append(fake_result("triplet", "sft", 5, 0.9, 0.9))  # no translation seed 5
    results.append(fake_result("contrastive", "sft", 0, 0.5, 0.2))  # no translation
    rows = family.head_to_head(results)
    assert [(r["dataset"], r["loss"]) for r in rows] == [("icons", "triplet")]
    (row,) = rows
    d = np.array(gain)
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert row["paired_seeds"] == 3
    assert row["delta_recall_at_1_mean"] == pytest.approx(d.mean())
    assert row["delta_recall_at_1_ci_low"] == pytest.approx(d.mean() - half)
    assert row["delta_mean_average_precision_at_r_mean"] == pytest.approx(0.0)
    line = family.head_to_head_table(rows).splitlines()[2]
    assert line.startswith(
        f"| translation | icons | triplet | 3 | {100 * d.mean():+.2f} ["
    )
    # the interval, [+0.5, +5.5] points, lies above 0
    assert line.endswith("| SFT higher |")


def test_rows_of_another_harness_are_named_not_silently_retrained(tmp_path):
    configs = family.family_configs({}, ["icons"], ["contrastive"], [0])
    old = tmp_path / "runs.csv"
    old.write_text(
        "name,recall_at_1,mean_average_precision_at_r,train_seconds\n"
        "icons_contrastive_none_backbone=x_split=test_seed=0,0.5,0.2,1.0\n"
    )
    with pytest.warns(
        UserWarning,
        match="none of the 1 rows .* by the name the harness gave it before",
    ):
        assert family.committed_results(configs, [old]) == {}


def test_a_summary_of_no_runs_is_empty():
    assert family.paired_summary([]) == [] and family.head_to_head([]) == []
    assert "| data set |" in family.markdown([])


def test_sft_is_compared_with_each_peer_that_ran_paired_by_seed():
    results = [
        fake_result("multisimilarity", "sft", s, 0.60 + s / 100, 0.3) for s in (0, 1, 2)
    ]
    results += [fake_result("multisimilarity", "see", s, 0.61, 0.3) for s in (0, 1, 2)]
    results += [fake_result("multisimilarity", "cov", 1, 0.5, 0.3)]
    rows = family.head_to_head(results)
    assert [(r["reference"], r["paired_seeds"]) for r in rows] == [
        ("see", 3),
        ("cov", 1),
    ]
    assert rows[0]["delta_recall_at_1_mean"] == pytest.approx(0.0)
    assert rows[1]["delta_recall_at_1_mean"] == pytest.approx(0.11)
    table = family.head_to_head_table(rows)
    assert "| Spherical Embedding Expansion | icons | multisimilarity | 3 |" in table
    assert "+11.00 (1 seed)" in table


# names the harness gave runs before they were keyed by their whole configuration
# (benchmarks/train.py at d309b7c), copied from committed rows
LEGACY = {
    "emoji_contrastive_ee_warmup_epochs=10.0_ramp_epochs=5.0_num_points=4_backbone="
    "efficientnet_lite0_pretrained=True_train_from_block=15_epochs=20_lr=0.01_"
    "image_size=64_split=test_seed=0": ("emoji", "contrastive", "ee", 0.01, 4),
    "icons_triplet_none_backbone=efficientnet_lite0_pretrained=True_train_from_block="
    "15_epochs=20_lr=0.0015_image_size=64_split=val_seed=101": (
        "icons",
        "triplet",
        "none",
        0.0015,
        None,
    ),
}


def comparison_config(dataset, loss, method, lr, points, split):
    args = family.build_parser("", split).parse_args([])
    return RunConfig.make(
        **family.base_options(args),
        dataset=dataset,
        loss=loss,
        method=method,
        lr=lr,
        seed=0 if split == "test" else 101,
        num_points=points,
    )


@pytest.mark.parametrize("old", LEGACY)
def test_rows_of_the_harness_before_run_keys_are_found_by_their_old_name(tmp_path, old):
    dataset, loss, method, lr, points = LEGACY[old]
    split = "test" if old.endswith("test_seed=0") else "val"
    config = comparison_config(dataset, loss, method, lr, points, split)
    assert family.legacy_name(config) == old
    path = tmp_path / "runs.csv"
    path.write_text(
        "name,recall_at_1,mean_average_precision_at_r,train_seconds,commit\n"
        f"{old},0.5,0.2,1.0,f27bb3e\n"
    )
    (result,) = family.committed_results([config], [path]).values()
    assert result["name"] == config.name() and result["commit"] == "f27bb3e"
    assert result["metrics"]["recall_at_1"] == 0.5
    # an old name says less than a key: a row without its commit (not written by
    # the family comparison or its tuning) is not taken under it
    other_file = tmp_path / "other.csv"
    other_file.write_text(
        "name,recall_at_1,mean_average_precision_at_r,train_seconds,commit\n"
        f"{old},0.5,0.2,1.0,\n"
    )
    with pytest.warns(UserWarning, match="none of the 1 rows"):
        assert family.committed_results([config], [other_file]) == {}
    # another option, or a field the old name did not record, is another run
    other = [
        dataclasses.replace(config, seed=config.seed + 1),
        dataclasses.replace(config, embedding_size=64),
        dataclasses.replace(config, eval_every=2),
    ]
    for c in other:
        assert family.legacy_name(c) != old
        assert family.committed_results([c], [path]) == {}


def test_methods_the_old_harness_did_not_have_have_no_old_name():
    for method in ("see", "mixup", "cov", "das"):
        config = comparison_config(
            "icons", "multisimilarity", method, 0.003, None, "test"
        )
        assert family.legacy_name(config) is None


def test_methods_limits_the_comparison_to_those_and_the_baseline():
    configs = family.family_configs(
        {}, ["icons"], ["multisimilarity", "proxyanchor"], [0], methods=["see", "ee"]
    )
    assert [(c.loss, c.method) for c in configs] == [
        ("multisimilarity", "none"),
        ("multisimilarity", "ee"),
        ("multisimilarity", "see"),
        ("proxyanchor", "none"),
        ("proxyanchor", "see"),
    ]
    with pytest.raises(SystemExit):
        family.build_parser("", "test").parse_args(["--methods", "none"])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_run_uses_one_thread_whatever_the_workers(workers):
    # the thread count changes a run's numbers; the committed rows used one
    args = family.build_parser("", "test").parse_args(["--workers", workers])
    assert family.base_options(args)["threads"] == 1


def test_a_method_without_chosen_settings_is_refused_or_left_out_of_a_report():
    chosen = {"icons": {"contrastive": {"none": {"lr": 0.01}, "sft": {"lr": 0.01}}}}
    with pytest.raises(ValueError, match="icons, contrastive, translation: finish"):
        family.family_configs({}, ["icons"], ["contrastive"], [0], chosen)
    configs = family.family_configs(
        {}, ["icons"], ["contrastive"], [0], chosen, untuned="skip"
    )
    assert [(c.method, c.lr) for c in configs] == [("none", 0.01), ("sft", 0.01)]
