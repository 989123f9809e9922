"""The speed benchmark runs end to end (tiny sizes; its numbers are not checked)."""

import json

from benchmarks import speed
from pml_sft.functional import compilation


def test_speed_benchmark_smoke(tmp_path, capsys, compile_mode):
    out = tmp_path / "speed.json"
    speed.main(
        [
            "--n=64",
            "--d=8",
            "--repeats=2",
            "--naive-rows=4",
            "--batch-size=16",
            "--m-per-class=4",
            "--rounds=2",
            f"--json={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert "| wrapper's own work (wrapped - inner) / inner |" in printed
    assert "rotate, default (auto: eager, small or no compiler)" in printed
    result = json.loads(out.read_text())
    for mode in ("auto", "never"):
        ratios = result["wrapper_ratios"][mode]
        for name, r in ratios.items():
            assert r["min"] <= r["median"] <= r["max"], (mode, name, r)
            # a difference of two timings may come out below zero at tiny sizes
            assert r["min"] > 0 or name.startswith("wrapper's own"), (mode, name, r)
        assert len(result["wrapper_seconds"][mode]["rounds"]) == 2
    assert result["naive_over_rotate"] > 0
    assert compilation.compile_failure() is None
