"""Every benchmark command the shell scripts and the docs run still parses and
builds its runs (nothing is trained: the runs are stopped before training)."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from benchmarks import compare, family, family_tuning

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))
MODULES = {
    "benchmarks.compare": compare,
    "benchmarks.family": family,
    "benchmarks.family_tuning": family_tuning,
}


class Stop(Exception):
    pass


def script_commands(script, tmp_path):
    """The ``.venv/bin/python -m ...`` argument lists ``script`` runs, recorded by
    running it in a copy of the layout with a stub python."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    copy = tmp_path / "benchmarks" / script.name
    copy.write_text(script.read_text())
    stub = tmp_path / ".ci" / "setup-venv"
    stub.write_text("#!/bin/sh\n")
    record = tmp_path / "calls.jsonl"
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    for path in (stub, python):
        path.chmod(0o755)
    (tmp_path / "runs" / "main").mkdir(parents=True)
    (tmp_path / "runs" / "main" / "summary.md").write_text("")
    subprocess.run(["bash", str(copy)], check=True, capture_output=True)
    return [json.loads(line) for line in record.read_text().splitlines()]


def doc_commands():
    """``python -m benchmarks.(compare|family|family_tuning) ...`` lines of the
    bash blocks of the README, the docs and the results' READMEs (continuations
    joined)."""
    found = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += sorted((ROOT / "benchmarks/results").glob("*/README.md"))
    for page in pages:
        for block in re.findall(r"(?ms)^```bash\n(.*?)^```", page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line.split("#")[0])
                if "-m" in words and words[words.index("-m") + 1] in MODULES:
                    found.append(words[words.index("-m") :])
    return found


def check(argv, monkeypatch, tmp_path):
    module = MODULES[argv[1]]
    built = []

    def stop(configs, *args, **kwargs):
        built.extend(configs)
        raise Stop

    monkeypatch.setattr(compare, "run_all", stop)
    # the comparison and the tuning stop where they would train (their runs may
    # all be finished: committed rows are reused)
    monkeypatch.setattr(family, "train_missing", stop)
    monkeypatch.setattr(family_tuning, "train_missing", stop)
    # committed inputs (chosen.json, runs.csv) from the repository
    rest = [str(ROOT / a) if a.startswith("benchmarks/") else a for a in argv[2:]]
    with pytest.raises(Stop):
        module.main(rest + ["--out", str(tmp_path / "out")])
    assert built and all(c.key() for c in built)
    return built


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_script_command_parses(script, tmp_path, monkeypatch):
    commands = script_commands(script, tmp_path)
    assert commands, script.name
    for argv in commands:
        if argv[:2] == ["-m", "benchmarks.compare"]:
            check(argv, monkeypatch, tmp_path)


def test_every_documented_command_parses(tmp_path, monkeypatch):
    commands = doc_commands()
    assert commands
    for argv in commands:
        check(argv, monkeypatch, tmp_path)
