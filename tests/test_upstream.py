"""The upstream contribution: the PML-style file, the plugin built on it, and
``python -m pml_sft.upstream`` on a small fake PML checkout."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import losses, miners

import pml_sft
from pml_sft.upstream import __main__ as upstream_cli
from pml_sft.upstream import sft_loss

FILE = Path(sft_loss.__file__)


def test_upstream_file_is_self_contained():
    text = FILE.read_text()
    assert "pml_sft" not in text and len(text.splitlines()) <= 300
    imports = [
        line.split()[1]
        for line in text.splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert {name.split(".")[0] for name in imports} <= {
        "torch",
        "pytorch_metric_learning",
        "warnings",
    }
    for modern in ("linalg.vecdot", "aminmax", "stable="):  # PML's CI runs torch 1.6
        assert modern not in text


@pytest.mark.parametrize("cls", [pml_sft.SFTLoss, pml_sft.FeatureTranslationLoss])
def test_plugin_wrappers_share_the_upstream_schedule(cls):
    assert issubclass(cls, sft_loss.SFTLoss)


@pytest.mark.parametrize(
    "inner,miner",
    [
        (losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
        (losses.TripletMarginLoss(), None),
        (losses.ProxyAnchorLoss(8, 16), None),
    ],
    ids=["ms", "triplet", "proxyanchor"],
)
def test_plugin_sft_loss_equals_the_upstream_file(inner, miner):
    # same random state, same samples: the plugin adds checks and statistics only
    inner = inner.double()
    x = torch.randn(32, 16, dtype=torch.float64)
    y = torch.arange(8).repeat_interleave(4)
    results = []
    for cls in (sft_loss.SFTLoss, pml_sft.SFTLoss):
        torch.manual_seed(0)
        loss_fn = cls(inner, miner, num_targets=2, total_iterations=8)
        steps = []
        for _ in range(8):
            emb = x.clone().requires_grad_()
            loss = loss_fn(emb, y)
            loss.backward()
            steps.append((loss.detach(), emb.grad))
        results.append(steps)
    for (a, ga), (b, gb) in zip(*results):
        assert torch.equal(a, b) and torch.equal(ga, gb)


def _fake_pml(root):
    (root / "src/pytorch_metric_learning/losses").mkdir(parents=True)
    (root / "tests/losses").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "src/pytorch_metric_learning/losses/__init__.py").write_text(
        "from .angular_loss import AngularLoss\n"
        "from .self_supervised_loss import SelfSupervisedLoss\n"
        "from .vicreg_loss import VICRegLoss\n"
    )
    (root / "docs/losses.md").write_text(
        "# Losses\n\nintro\n\n## AngularLoss\na\n\n## SelfSupervisedLoss\nb\n\n"
        "## SignalToNoiseRatioContrastiveLoss\nc\n\n## VICRegLoss\nd\n"
    )
    (root / "CONTENTS.md").write_text(
        "### [Losses](x)\n| Name | Reference Papers |\n|---|---|\n"
        "| [**AngularLoss**](a) | p\n| [**VICRegLoss**](v) | q\n\n### [Miners](m)\n"
        "| [**BatchHardMiner**](b) | r\n"
    )


def test_upstream_command_writes_the_contribution_once(tmp_path):
    _fake_pml(tmp_path)
    changed = upstream_cli.apply(tmp_path)
    assert len(changed) == 6
    init = (tmp_path / "src/pytorch_metric_learning/losses/__init__.py").read_text()
    assert init.splitlines()[2] == "from .sft_loss import SFTLoss"
    docs = (tmp_path / "docs/losses.md").read_text()
    titles = [line for line in docs.splitlines() if line.startswith("## ")]
    assert titles == [
        "## AngularLoss",
        "## SelfSupervisedLoss",
        "## SFTLoss",
        "## SignalToNoiseRatioContrastiveLoss",
        "## VICRegLoss",
    ]
    assert docs.endswith("## VICRegLoss\nd\n")
    assert "{target=_blank}" in docs and "**Parameters**" in docs
    contents = (tmp_path / "CONTENTS.md").read_text().splitlines()
    assert contents[4].startswith("| [**SFTLoss**]") and "2008.01469" in contents[4]
    assert contents[-1] == "| [**BatchHardMiner**](b) | r"
    copied = tmp_path / "src/pytorch_metric_learning/losses/sft_loss.py"
    assert copied.read_bytes() == FILE.read_bytes()
    assert (tmp_path / "tests/losses/test_sft_loss.py").is_file()
    assert (tmp_path / "docs/imgs/sft_loss_equation.png").is_file()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert upstream_cli.apply(tmp_path) == []
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_upstream_command_refuses_other_folders(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pml_sft.upstream", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "is not a pytorch-metric-learning checkout" in out.stderr


def test_upstream_test_runs_inside_pml_layout(tmp_path):
    # the copied test imports only PML's names and ``from .. import TEST_DEVICE``
    text = (Path(__file__).parent / "losses" / "test_sft_loss.py").read_text()
    assert "pml_sft" not in text and "from .. import TEST_DEVICE, TEST_DTYPES" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sft_loss.SFTLoss(losses.ContrastiveLoss(), total_iterations=10)
