"""The upstream contribution: the PML-style file, its test, and the plugin grown from
it (one SFT: the plugin's SFTLoss runs the upstream forward and augmentation step).
The writer (``python -m pml_sft.upstream``) is tested in test_upstream_writer.py."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.losses.base_loss_wrapper import BaseLossWrapper
from pytorch_metric_learning.losses.base_metric_loss_function import (
    BaseMetricLossFunction,
)
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

import pml_sft
from pml_sft.augmenters import base_feature_augmenter
from pml_sft.upstream import sft_loss
from pml_sft.upstream.pml_form import pml_form

FILE = Path(sft_loss.__file__)
TEST = Path(__file__).parent / "losses" / "test_sft_loss.py"
# APIs newer than torch 1.6, the oldest torch of PML's CI (python 3.8 / torch 1.6)
NEWER_THAN_TORCH_1_6 = (
    r"torch\.outer\b",  # 1.8
    r"\.outer\(",
    r"torch\.linalg\b",  # 1.7-1.8
    r"vecdot",
    r"aminmax",  # 1.11
    r"\.amax\(",  # 1.7
    r"\.amin\(",
    r"torch\.amax\b",
    r"stable=",  # sort(stable=...), 1.9
    r"torch\.func\b",  # 2.0
    r"functional_call",
    r"extra_state",  # get/set_extra_state, 1.10
    r"inference_mode",  # 1.9
    r"torch\.special\b",  # 1.9
    r"nan_to_num",  # 1.8
    r"torch\.isin\b",  # 1.10
    r"take_along_dim",  # 1.9
    r"torch\.vmap\b",
    r"torch\.compile\b",
)


@pytest.mark.parametrize("path", [FILE, TEST], ids=["sft_loss.py", "its test"])
def test_upstream_files_use_only_torch_1_6_apis(path):
    text = path.read_text()
    assert "pml_sft" not in text
    found = [p for p in NEWER_THAN_TORCH_1_6 if re.search(p, text)]
    assert found == []


def test_the_torch_1_6_check_can_fail():
    text = "x = torch.outer(a, b)\ny = a.amax(dim=1)\n"
    assert [p for p in NEWER_THAN_TORCH_1_6 if re.search(p, text)]


def test_upstream_file_is_self_contained():
    text = FILE.read_text()
    assert len(text.splitlines()) <= 400
    imports = [
        line.split()[1]
        for line in text.splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert {name.split(".")[0] for name in imports} <= {
        "math",
        "torch",
        "pytorch_metric_learning",
    }


def test_pml_form_passes_pml_isort_and_black(tmp_path):
    # written into a tree laid out like PML's, where isort sees the package as
    # first-party (its src/); skipped without the dev tools
    pytest.importorskip("isort")
    pytest.importorskip("black")
    package = tmp_path / "src/pytorch_metric_learning"
    (package / "losses").mkdir(parents=True)
    (tmp_path / "tests/losses").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    src = package / "losses/sft_loss.py"
    src.write_text(pml_form(FILE.read_text(), in_src=True))
    test = tmp_path / "tests/losses/test_sft_loss.py"
    test.write_text(pml_form(TEST.read_text(), in_src=False))
    for tool in (["isort", "--profile", "black"], ["black"]):
        out = subprocess.run(
            [sys.executable, "-m", *tool, "--check", "--diff", str(src), str(test)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    text = src.read_text()
    assert "from .base_loss_wrapper import BaseLossWrapper" in text
    assert "from ..utils import common_functions as c_f" in text


@pytest.mark.parametrize("cls", [pml_sft.SFTLoss, pml_sft.FeatureTransformLoss])
def test_at_most_two_class_levels_to_pml(cls):
    # pml_sft.SFTLoss -> upstream SFTLoss -> PML's bases; the plugin's part is a mixin
    # (BaseMetricLossFunction last, only so that a released PML's
    # DistributedLossWrapper accepts it; the pull request makes it accept SFTLoss)
    bases = (pml_sft.losses.CheckedLoss, sft_loss.SFTLoss, BaseMetricLossFunction)
    assert cls.__bases__ == bases
    assert sft_loss.SFTLoss.__bases__ == (BaseLossWrapper, ModuleWithRecords)


def test_one_augmenting_call_runs_the_upstream_step_once(monkeypatch):
    calls = []
    step = sft_loss._transform

    def spy(*args, **kwargs):
        calls.append(args[-2])
        return step(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a second pipeline ran")

    monkeypatch.setattr(sft_loss, "_transform", spy)
    monkeypatch.setattr(
        base_feature_augmenter.BaseFeatureAugmenter, "augment", forbidden
    )
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.arange(4).repeat_interleave(4)
    for cls, move in [
        (pml_sft.SFTLoss, sft_loss._rotate),
        (pml_sft.FeatureTranslationLoss, sft_loss._translate),
    ]:
        calls.clear()
        loss_fn = cls(losses.MultiSimilarityLoss(), warmup_iterations=0)
        loss_fn(x, y).backward()
        assert calls == [move] and loss_fn.num_augmented == 16
        assert not hasattr(loss_fn, "distance")  # the wrapped loss's applies
    # the augmenters call the very same step
    assert base_feature_augmenter._transform is step


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


def test_upstream_test_runs_inside_pml_layout():
    # the copied test imports only PML's names and ``from .. import TEST_DEVICE``
    text = TEST.read_text()
    assert "pml_sft" not in text and "from .. import TEST_DEVICE, TEST_DTYPES" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sft_loss.SFTLoss(losses.ContrastiveLoss(), total_iterations=10)


def test_docs_section_lists_the_supported_losses_and_no_inline_maths():
    text = (FILE.parent / "losses_section.md").read_text()
    listed = text.split('??? note "Supported Loss Functions"')[1]
    names = re.findall(r"- \[(\w+)\]\(losses.md#(\w+)\)", listed)
    assert sorted(n for n, _ in names) == sorted(sft_loss.SUPPORTED_LOSSES)
    assert all(anchor == name.lower() for name, anchor in names)
    assert "$" not in text  # PML's mkdocs has no arithmatex
