"""Every run is keyed by its whole configuration: a finished run is reused only
when every field (and every option of its method) matches."""

import dataclasses
import json

import pytest

from benchmarks import registry, train


def changed(value):
    """Another value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(type(value))


FIELDS = [
    f.name
    for f in dataclasses.fields(train.RunConfig)
    if f.name not in (*train.RunConfig.NOT_IN_KEY, "options")
]


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_changes_the_key(field):
    cfg = train.RunConfig()
    value = {"method": "translation", "loss": "contrastive"}.get(field)
    value = changed(getattr(cfg, field)) if value is None else value
    other = dataclasses.replace(cfg, **{field: value})
    assert other.key() != cfg.key() and other.name() != cfg.name()


@pytest.mark.parametrize(
    "method,option",
    [(m, o) for m, entry in registry.METHODS.items() for o in entry.options],
)
def test_every_method_option_changes_the_key(method, option):
    cfg = train.RunConfig(method=method)
    value = changed(cfg.method_options()[option])
    assert train.RunConfig(method=method, options={option: value}).key() != cfg.key()
    # the default stated or left out: the same run
    default = registry.METHODS[method].options[option]
    assert train.RunConfig(method=method, options={option: default}).key() == cfg.key()


@pytest.mark.parametrize("field", train.RunConfig.NOT_IN_KEY)
def test_where_things_are_read_from_and_shown_is_not_in_the_key(field):
    cfg = train.RunConfig()
    other = dataclasses.replace(cfg, **{field: changed(getattr(cfg, field))})
    assert other.key() == cfg.key()


def test_equal_settings_written_differently_share_the_key(tmp_path):
    assert (
        train.RunConfig(warmup_epochs=10).key()
        == train.RunConfig(warmup_epochs=10.0).key()
    )
    # the baseline has no schedule: one baseline for every schedule
    none = train.RunConfig(method="none")
    late = train.RunConfig(method="none", warmup_epochs=10, ramp_epochs=5)
    assert late.key() == none.key()
    assert (
        train.RunConfig(method="sft", warmup_epochs=10).key()
        != train.RunConfig(method="sft").key()
    )
    # a Path for the cache: the stored config is still JSON
    json.dumps(train.RunConfig(cache_dir=tmp_path).identity())


def test_a_finished_run_is_reused_only_for_the_same_config(tmp_path, monkeypatch):
    trained = []

    def fake_training(cfg, run_dir):
        trained.append(cfg.key())
        result = {"name": cfg.name(), "identity": cfg.identity(), "metrics": {}}
        (run_dir / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(train, "train_and_evaluate", fake_training)
    small = train.RunConfig(max_classes=50, progress=False)
    train.run(small, tmp_path)
    train.run(small, tmp_path)
    assert len(trained) == 1  # reused
    # the bug of the hand-picked name: max_classes (or batch_size, ...) was not in
    # it, so a full run into the same folder returned the 50-class result
    for field, value in (
        ("max_classes", 0),
        ("batch_size", 64),
        ("embedding_size", 64),
        ("weight_decay", 0.0),
        ("width", 16),
        ("val_fraction", 0.3),
    ):
        train.run(dataclasses.replace(small, **{field: value}), tmp_path)
    train.run(
        train.RunConfig.make(max_classes=50, progress=False, ema_momentum=0.5), tmp_path
    )
    assert len(trained) == 8 and len(set(trained)) == 8
    # a folder whose stored config differs (edited, or from older code) is not reused
    path = tmp_path / small.name() / "result.json"
    stored = json.loads(path.read_text())
    stored["identity"]["lr"] = 1.0
    path.write_text(json.dumps(stored))
    train.run(small, tmp_path)
    assert len(trained) == 9
    # the run's folder holds its whole config
    config = json.loads((tmp_path / small.name() / "config.json").read_text())
    assert config == json.loads(json.dumps(small.identity()))


def test_an_option_typo_is_refused_wherever_it_is_given():
    with pytest.raises(TypeError, match="unknown run setting 'num_pionts'"):
        train.RunConfig.make(method="ee", options={"num_pionts": 3})
    with pytest.raises(SystemExit):
        train.main(["--method", "sfft"])
    with pytest.raises(SystemExit):  # a pair that cannot be built: before any folder
        train.main(["--loss", "multisimilarity", "--method", "ps", "--out", "/nowhere"])


def test_an_interrupted_attempt_leaves_no_logs_behind(tmp_path, monkeypatch):
    cfg = train.RunConfig(progress=False)
    stale = tmp_path / cfg.name() / "logs"
    stale.mkdir(parents=True)
    (stale / "loss_histories.csv").write_text("from the interrupted attempt")
    seen = []

    def fake_training(cfg, run_dir):
        seen.append(sorted(p.name for p in run_dir.rglob("*")))
        return {}

    monkeypatch.setattr(train, "train_and_evaluate", fake_training)
    train.run(cfg, tmp_path)
    assert seen == [["config.json"]]
