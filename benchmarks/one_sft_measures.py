"""The numbers behind issue 29's note and the "one SFT" row of docs/changes.md:

    python -m benchmarks.one_sft_measures [--before REV]

* the walk of one augmenting call of SFTLoss(MultiSimilarityLoss(), miner): the
  project files and calls it goes through (sys.setprofile);
* the share of validation lines in the core (functional, centers, augmenters,
  losses, utils and the upstream file): lines of check_*/validate* functions, of
  `if` statements that only raise, and of other raise statements; for REV too;
* the accuracy of the rotation for nearly antipodal centres: max |R_ji R_ij x - x|.
"""

import argparse
import ast
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CORE = ("functional", "centers", "augmenters", "losses", "utils")


def walk():
    from pytorch_metric_learning import losses, miners

    import pml_sft

    loss_fn = pml_sft.SFTLoss(
        losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(), warmup_iterations=0
    )
    x = torch.randn(32, 16, requires_grad=True)
    y = torch.arange(8).repeat_interleave(4)
    calls = []

    def profile(frame, event, arg):
        if event == "call" and "/pml_sft/" in frame.f_code.co_filename:
            name = frame.f_code.co_filename.split("/pml_sft/")[1]
            calls.append((name, frame.f_code.co_name))

    sys.setprofile(profile)
    loss_fn(x, y)
    sys.setprofile(None)
    files = collections.OrderedDict()
    for name, function in calls:
        files.setdefault(name, []).append(function)
    print(f"one augmenting call: {len(calls)} calls in {len(files)} project files")
    for name, functions in files.items():
        print(f"  {name}: {', '.join(functions)}")


def validation_share(root):
    paths = [p for d in CORE for p in (root / "pml_sft" / d).glob("*.py")]
    paths.append(root / "pml_sft" / "upstream" / "sft_loss.py")
    total = checked = 0
    for path in paths:
        text = path.read_text()
        lines = text.splitlines()
        code = {
            i + 1
            for i, line in enumerate(lines)
            if line.strip() and not line.strip().startswith("#")
        }
        marked = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith(
                ("check", "validate", "_check")
            ):
                marked |= set(range(node.lineno, node.end_lineno + 1))
            elif (
                isinstance(node, ast.If)
                and all(isinstance(b, ast.Raise) for b in node.body)
                and not node.orelse
            ) or isinstance(node, ast.Raise):
                marked |= set(range(node.lineno, node.end_lineno + 1))
        total += len(code)
        checked += len(code & marked)
    return checked, total


def antipodal_accuracy():
    from pml_sft.upstream.sft_loss import _rotate

    g = torch.Generator().manual_seed(0)
    for dtype, s in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        a = torch.randn(64, 16, generator=g, dtype=torch.float64)
        a = torch.nn.functional.normalize(a, dim=1)
        u = torch.randn(64, 16, generator=g, dtype=torch.float64)
        u = torch.nn.functional.normalize(u - (u * a).sum(1, keepdim=True) * a, dim=1)
        b = torch.nn.functional.normalize(-a + s * u, dim=1)
        a, b = a.to(dtype), b.to(dtype)
        x = torch.randn(64, 16, generator=g, dtype=torch.float64).to(dtype)
        error = (_rotate(_rotate(x, a, b), b, a) - x).abs().max().item()
        print(
            f"nearly antipodal, {dtype}, sin t = {s:g}: max |R_ji R_ij x - x| {error:.2g}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None, help="a revision to compare with")
    args = parser.parse_args(argv)
    walk()
    checked, total = validation_share(ROOT)
    print(f"validation lines: {checked} of {total} ({100 * checked / total:.1f} %)")
    if args.before:
        with tempfile.TemporaryDirectory() as folder:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before, "pml_sft"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
            checked, total = validation_share(Path(folder))
        print(
            f"validation lines at {args.before}: {checked} of {total} "
            f"({100 * checked / total:.1f} %)"
        )
    antipodal_accuracy()


if __name__ == "__main__":
    main()
