"""``python -m pml_sft.upstream`` on small fake PML checkouts (and once on PML's own
tree, when its mirror is at hand)."""

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pml_sft.upstream import __main__ as upstream
from pml_sft.upstream.pml_form import pml_form

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path("/work/.mirror/KevinMusgrave+pytorch-metric-learning/repo")
LOSSES = "src/pytorch_metric_learning/losses"
INIT = f"{LOSSES}/__init__.py"
IMPORT = "from .sft_loss import SFTLoss\n"
DOCS = (
    "# Losses\n\nintro, café\n\n## AngularLoss\na\n\n## InstanceLoss\ni\n\n"
    "## HistogramLoss\nh\n\n## SelfSupervisedLoss\nb\n\n"
    "## SignalToNoiseRatioContrastiveLoss\nc\n\n## VICRegLoss\nd\n"
)
CONTENTS = (
    "### [Losses](x)\n| Name | Reference Papers |\n|---|---|\n"
    "| [**AngularLoss**](a) | p\n| [**InstanceLoss**](i) | q\n"
    "| [**HistogramLoss**](h) | r\n| [**VICRegLoss**](v) | s\n\n"
    "### [Miners](m)\n| [**BatchHardMiner**](b) | t\n"
)


# the lines of PML 2.8.1's utils/distributed.py that the contribution extends
DISTRIBUTED = """import torch

from ..losses import BaseMetricLossFunction, CrossBatchMemory
from ..miners import BaseMiner


class DistributedLossWrapper(torch.nn.Module):
    def __init__(self, loss, efficient=False):
        super().__init__()
        if not isinstance(loss, (BaseMetricLossFunction, CrossBatchMemory)):
            raise TypeError(
                "The input loss must extend BaseMetricLossFunction or CrossBatchMemory"
            )
        if isinstance(loss, CrossBatchMemory) and efficient:
            raise ValueError(
                "CrossBatchMemory with efficient=True is not currently supported"
            )
"""


def fake_pml(root, version="2.8.1"):
    """A minimal PML checkout: imports, docs sections and table rows not all
    sorted (InstanceLoss before HistogramLoss), as in PML."""
    for folder in (LOSSES, "src/pytorch_metric_learning/utils", "tests/losses"):
        (root / folder).mkdir(parents=True)
    (root / "docs/imgs").mkdir(parents=True)
    (root / upstream.DISTRIBUTED).write_text(DISTRIBUTED)
    (root / "src/pytorch_metric_learning/__init__.py").write_text(
        f'__version__ = "{version}"\n'
    )
    (root / INIT).write_text(
        "from .angular_loss import AngularLoss\n"
        "from .base_loss_wrapper import BaseLossWrapper\n"
        "from .instance_loss import InstanceLoss\n"
        "from .histogram_loss import HistogramLoss\n"
        "from .self_supervised_loss import SelfSupervisedLoss\n"
        "from .vicreg_loss import VICRegLoss\n"
    )
    (root / LOSSES / "base_loss_wrapper.py").write_text("class BaseLossWrapper:\n")
    (root / "tests/losses/__init__.py").write_text("")
    (root / "docs/losses.md").write_bytes(DOCS.encode("utf-8"))
    (root / "CONTENTS.md").write_text(CONTENTS)
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def text(root, rel):
    return (root / rel).read_bytes().decode("utf-8")


def section():
    return (Path(upstream.HERE) / "losses_section.md").read_text("utf-8").strip()


def titles(root):
    return [s for s in text(root, "docs/losses.md").splitlines() if s.startswith("## ")]


def rows(root):
    return [
        s.split("**")[1] for s in text(root, "CONTENTS.md").splitlines() if "**" in s
    ]


def imports(root):
    return [s for s in text(root, INIT).splitlines() if "sft_loss" in s]


def test_writes_the_contribution_once(tmp_path):
    root = fake_pml(tmp_path)
    changed = upstream.apply(root)
    assert len(changed) == 7
    init = text(root, INIT).splitlines()
    assert init[4:] == [
        "from .self_supervised_loss import SelfSupervisedLoss",
        IMPORT.strip(),
        "from .vicreg_loss import VICRegLoss",
    ]
    assert [t.split()[1] for t in titles(root)] == [
        "AngularLoss",
        "InstanceLoss",
        "HistogramLoss",
        "SelfSupervisedLoss",
        "SFTLoss",
        "SignalToNoiseRatioContrastiveLoss",
        "VICRegLoss",
    ]
    docs = text(root, "docs/losses.md")
    assert section() + "\n\n## SignalToNoise" in docs
    assert docs.endswith("## VICRegLoss\nd\n")
    assert rows(root)[3:5] == ["SFTLoss", "VICRegLoss"]
    assert text(root, "CONTENTS.md").endswith(
        "### [Miners](m)\n| [**BatchHardMiner**](b) | t\n"
    )
    for source, rel in upstream.sources():
        expected = source.read_bytes()
        if source.suffix == ".py":  # with PML's imports as PML's tree has them
            in_src = rel.startswith("src/")
            expected = pml_form(expected.decode("utf-8"), in_src).encode("utf-8")
        assert (root / rel).read_bytes() == expected
    before = snapshot(root)
    assert upstream.apply(root) == []
    assert snapshot(root) == before


def move(root, rel, old, new):
    path = root / rel
    content = text(root, rel)
    assert content.count(old) == 1
    path.write_bytes(content.replace(old, "").replace(new[0], new[1], 1).encode())


def test_moved_entries_are_replaced_where_they_stand(tmp_path):
    root = fake_pml(tmp_path)
    upstream.apply(root)
    # an outdated section after AngularLoss, an outdated row first, the import first
    move(
        root,
        "docs/losses.md",
        section() + "\n\n",
        ("## InstanceLoss", "## SFTLoss\nold\n\n## InstanceLoss"),
    )
    row = next(s for s in text(root, "CONTENTS.md").splitlines(True) if "SFTLoss" in s)
    move(
        root,
        "CONTENTS.md",
        row,
        ("| [**AngularLoss**]", "| [**SFTLoss**](old) | old\n| [**AngularLoss**]"),
    )
    move(root, INIT, IMPORT, ("from .angular", IMPORT + "from .angular"))
    assert len(upstream.apply(root)) == 2  # the import line stays as it is
    assert [t.split()[1] for t in titles(root)][1:3] == ["SFTLoss", "InstanceLoss"]
    assert text(root, "docs/losses.md").count(section()) == 1
    assert "\nold\n" not in text(root, "docs/losses.md")
    assert (
        rows(root)[:2] == ["SFTLoss", "AngularLoss"]
        and rows(root).count("SFTLoss") == 1
    )
    assert "(old)" not in text(root, "CONTENTS.md")
    assert text(root, INIT).startswith(IMPORT) and imports(root) == [IMPORT.strip()]
    before = snapshot(root)
    assert upstream.apply(root) == []
    assert snapshot(root) == before


def test_copies_left_by_earlier_runs_are_dropped(tmp_path):
    root = fake_pml(tmp_path)
    upstream.apply(root)
    for rel, old in (
        ("docs/losses.md", "## VICRegLoss\nd\n"),
        ("CONTENTS.md", "| [**VICRegLoss**](v) | s\n"),
        (INIT, "from .vicreg_loss import VICRegLoss\n"),
    ):
        copy = {
            "docs/losses.md": f"## VICRegLoss\nd\n\n{section()}\n",
            "CONTENTS.md": old + upstream.CONTENTS_ROW,
            INIT: old + IMPORT,
        }[rel]
        (root / rel).write_text(text(root, rel).replace(old, copy))
    upstream.apply(root)
    assert titles(root).count("## SFTLoss") == 1
    assert rows(root).count("SFTLoss") == 1 and imports(root) == [IMPORT.strip()]
    assert text(root, "docs/losses.md").endswith("## VICRegLoss\nd\n\n")


def test_import_line_with_a_comment_is_kept(tmp_path):
    root = fake_pml(tmp_path)
    line = "from .sft_loss import SFTLoss  # noqa: F401\n"
    (root / INIT).write_text(line + text(root, INIT))
    upstream.apply(root)
    assert imports(root) == [line.strip()] and text(root, INIT).startswith(line)


@pytest.mark.parametrize(
    "rel,content,reason",
    [
        ("CONTENTS.md", b"### [Miners](m)\n| [**BatchHardMiner**](b) | t\n", "Losses"),
        ("docs/losses.md", b"# Losses\n\nno sections\n", "'## ' section"),
        ("docs/losses.md", DOCS.encode("latin-1"), "not UTF-8"),
        (INIT, b"import os\n", "no entry"),
    ],
    ids=["no-losses-table", "no-sections", "latin-1", "no-imports"],
)
def test_a_file_that_cannot_be_edited_leaves_the_tree_unchanged(
    tmp_path, rel, content, reason
):
    root = fake_pml(tmp_path)
    (root / rel).write_bytes(content)
    before = snapshot(root)
    with pytest.raises(SystemExit, match=re.escape(rel) + ".*" + re.escape(reason)):
        upstream.apply(root)
    assert snapshot(root) == before


def test_read_only_file_leaves_the_tree_unchanged(tmp_path, monkeypatch):
    root = fake_pml(tmp_path)
    target = root / "docs/losses.md"
    target.chmod(0o444)
    if os.geteuid() == 0:  # root may write anyway: ask the writer's check as a user

        def access(path, mode, real=os.access):
            return not (Path(path) == target and mode & os.W_OK) and real(path, mode)

        monkeypatch.setattr(upstream.os, "access", access)
    before = snapshot(root)
    with pytest.raises(SystemExit, match="docs/losses.md: is read-only"):
        upstream.apply(root)
    assert snapshot(root) == before


def test_refuses_pml_older_than_2(tmp_path):
    root = fake_pml(tmp_path, version="1.7.3")
    (root / LOSSES / "base_loss_wrapper.py").unlink()
    before = snapshot(root)
    with pytest.raises(SystemExit, match=r"1\.7\.3, older than 2\.0"):
        upstream.apply(root)
    assert snapshot(root) == before


def test_refuses_other_folders(tmp_path, capsys):
    with pytest.raises(SystemExit, match="is not a pytorch-metric-learning checkout"):
        upstream.main([str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_crlf_files_keep_their_line_endings(tmp_path):
    root = fake_pml(tmp_path)
    edited = (INIT, "docs/losses.md", "CONTENTS.md")
    for rel in edited:
        (root / rel).write_bytes((root / rel).read_bytes().replace(b"\n", b"\r\n"))
    before = {rel: text(root, rel) for rel in edited}
    upstream.apply(root)
    for rel in edited:
        after = text(root, rel)
        assert after.count("\n") == after.count("\r\n") > before[rel].count("\n")
        old, new = before[rel].splitlines(True), after.splitlines(True)
        ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
        assert {op for op, *_ in ops} == {"equal", "insert"}
    assert upstream.apply(root) == []


@pytest.mark.parametrize("link", [f"{LOSSES}/sft_loss.py", "docs/imgs"])
def test_refuses_to_write_through_a_symbolic_link(tmp_path, link):
    root = fake_pml(tmp_path / "pml")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sft_loss.py").write_text("mine\n")
    if link == "docs/imgs":
        (root / link).rmdir()
        (root / link).symlink_to(outside, target_is_directory=True)
    else:
        (root / link).symlink_to(outside / "sft_loss.py")
    before, outside_before = snapshot(root), snapshot(outside)
    with pytest.raises(SystemExit, match=re.escape(link) + ": is a symbolic link"):
        upstream.apply(root)
    assert snapshot(root) == before and snapshot(outside) == outside_before


def test_command_line_in_an_ascii_locale(tmp_path):
    root = fake_pml(tmp_path)
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    command = [sys.executable, "-m", "pml_sft.upstream", str(root)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("wrote ") == 7
    assert titles(root).count("## SFTLoss") == 1 and "café" in text(
        root, "docs/losses.md"
    )


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no mirror of PML")
def test_real_pml_tree(tmp_path):
    archive = subprocess.run(
        [
            "git",
            f"--git-dir={MIRROR}",
            "archive",
            "HEAD",
            "src",
            "tests",
            "docs",
            "CONTENTS.md",
        ],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    assert len(upstream.apply(tmp_path)) == 7
    assert titles(tmp_path).count("## SFTLoss") == 1
    assert rows(tmp_path).count("SFTLoss") == 1 and imports(tmp_path) == [
        IMPORT.strip()
    ]
    before = snapshot(tmp_path)
    assert upstream.apply(tmp_path) == []
    assert snapshot(tmp_path) == before
    # PML's DistributedLossWrapper takes the merged SFTLoss: 2 gloo ranks
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("ok") == 2


DDP_SCRIPT = """
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pytorch_metric_learning
from pytorch_metric_learning import losses
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper


def run(rank, port):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    assert "src" in pytorch_metric_learning.__file__
    torch.manual_seed(rank)
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.arange(4).repeat_interleave(4)
    sft = losses.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=0)
    loss = DistributedLossWrapper(sft)(x, y)
    loss.backward()
    assert torch.isfinite(loss) and sft.num_augmented == 32 and x.grad.abs().sum() > 0
    try:
        DistributedLossWrapper(sft, efficient=True)
        raise AssertionError("efficient=True was accepted")
    except ValueError:
        pass
    print("ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(port,), nprocs=2)
"""


def test_distributed_wrapper_is_extended_once_or_the_tree_left_alone(tmp_path):
    root = fake_pml(tmp_path / "pml")
    upstream.apply(root)
    text = (root / upstream.DISTRIBUTED).read_text()
    assert "CrossBatchMemory, SFTLoss))" in text
    assert "(CrossBatchMemory, SFTLoss)) and efficient" in text
    assert text.count("SFTLoss") == 4
    other = fake_pml(tmp_path / "other")
    changed = DISTRIBUTED.replace("(BaseMetricLossFunction, CrossBatchMemory)", "(X,)")
    (other / upstream.DISTRIBUTED).write_text(changed)
    before = snapshot(other)
    with pytest.raises(SystemExit, match="distributed.py"):
        upstream.apply(other)
    assert snapshot(other) == before
