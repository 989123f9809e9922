"""Installing beside a user's own stack: the library needs torch, PML and numpy only;
``import pml_sft`` and an SFTLoss step work with the extras' packages absent."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("torchvision", "faiss", "record_keeper", "PIL", "matplotlib", "cairosvg")


def test_install_requires_only_what_the_library_imports():
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "INSTALL_REQUIRES" for t in node.targets)
    ]
    names = {r.split(">")[0] for r in ast.literal_eval(found[0])}
    assert names == {"torch", "pytorch-metric-learning", "numpy"}


SCRIPT = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"blocked: {{name}}")

sys.meta_path.insert(0, Block())
import torch
from pytorch_metric_learning import losses, miners
import pml_sft

loss = pml_sft.SFTLoss(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(),
                       warmup_iterations=0)
x = torch.randn(16, 8, requires_grad=True)
y = torch.arange(4).repeat_interleave(4)
loss(x, y).backward()
assert loss.num_augmented == 16 and torch.isfinite(x.grad).all()
assert not any(m.split(".")[0] in {BLOCKED!r} for m in sys.modules)
print("ok")
"""


def test_import_and_a_step_without_the_extras():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
