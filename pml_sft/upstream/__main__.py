"""Write the SFTLoss contribution into a pytorch-metric-learning checkout.

    python -m pml_sft.upstream PML_DIR

Copies ``sft_loss.py`` into ``src/pytorch_metric_learning/losses/``, its test into
``tests/losses/``, the equation image into ``docs/imgs/``, and inserts the import
line, the ``docs/losses.md`` section and the ``CONTENTS.md`` row in alphabetical
place. Running it again changes nothing (an outdated section or row is replaced).
Run it from a pml-sft checkout: the test lives in its ``tests/losses/``.
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "SFTLoss"
MODULE = "sft_loss"
IMPORT_LINE = f"from .{MODULE} import {NAME}\n"
CONTENTS_ROW = (
    f"| [**{NAME}**](https://kevinmusgrave.github.io/pytorch-metric-learning/losses/"
    f"#{NAME.lower()}) | [Spherical Feature Transform for Deep Metric Learning]"
    "(https://arxiv.org/abs/2008.01469)\n"
)
REQUIRED = (
    "src/pytorch_metric_learning/losses/__init__.py",
    "tests/losses",
    "docs/losses.md",
    "CONTENTS.md",
)


def sources():
    """(source path, path inside the PML checkout) of each copied file."""
    test = HERE.parent.parent / "tests" / "losses" / f"test_{MODULE}.py"
    if not test.is_file():
        raise SystemExit(
            f"cannot find {test}: run this from a pml-sft checkout (the test is in "
            "its tests/losses/, which an installed package does not hold)"
        )
    return [
        (HERE / f"{MODULE}.py", f"src/pytorch_metric_learning/losses/{MODULE}.py"),
        (test, f"tests/losses/test_{MODULE}.py"),
        (HERE / f"{MODULE}_equation.png", f"docs/imgs/{MODULE}_equation.png"),
    ]


def check_checkout(root):
    missing = [p for p in REQUIRED if not (root / p).exists()]
    if missing:
        raise SystemExit(
            f"{root} is not a pytorch-metric-learning checkout: it has no "
            f"{', '.join(missing)}"
        )


def insert_sorted(lines, new, is_entry, key):
    """``lines`` with ``new`` inserted before the first entry whose key is greater
    than ``new``'s (after the last entry if none is); an entry with the same key
    is replaced."""
    entries = [i for i, line in enumerate(lines) if is_entry(line)]
    if not entries:
        raise SystemExit(f"found no place to insert {new.strip()!r}")
    for i in entries:
        if key(lines[i]) == key(new):
            return lines[:i] + [new] + lines[i + 1 :]
        if key(lines[i]) > key(new):
            return lines[:i] + [new] + lines[i:]
    return lines[: entries[-1] + 1] + [new] + lines[entries[-1] + 1 :]


def add_import(text):
    lines = text.splitlines(keepends=True)
    lines = insert_sorted(
        lines, IMPORT_LINE, lambda s: s.startswith("from ."), lambda s: s.lower()
    )
    return "".join(lines)


def add_docs_section(text):
    section = (HERE / "losses_section.md").read_text().rstrip("\n") + "\n\n"
    # split into the preamble and "## Name" sections, replace or insert ours
    parts = re.split(r"(?m)^(?=## )", text)
    head, sections = parts[0], parts[1:]

    def title(s):
        return s.split("\n", 1)[0][3:].strip().lower()

    if not sections:
        raise SystemExit("docs/losses.md has no '## ' sections")
    last = sections[-1]
    padded = sections[:-1] + [last.rstrip("\n") + "\n\n"]
    new = insert_sorted(padded, section, lambda s: True, title)
    # the file ends as it did: after the original last section, or after ours
    new[-1] = last if new[-1] is not section else section.rstrip("\n") + "\n"
    return head + "".join(new)


def add_contents_row(text):
    lines = text.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("### [Losses]")), None
    )
    if start is None:
        raise SystemExit("CONTENTS.md has no '### [Losses]' table")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("###")),
        len(lines),
    )

    def key(line):
        return line.split("**")[1].lower()

    table = insert_sorted(
        lines[start:end], CONTENTS_ROW, lambda s: s.startswith("| [**"), key
    )
    return "".join(lines[:start] + table + lines[end:])


def apply(root):
    """Write the contribution into the checkout at ``root``; returns the paths
    that changed."""
    root = Path(root)
    check_checkout(root)
    changed = []
    for source, target in sources():
        target = root / target
        if not target.exists() or target.read_bytes() != source.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            changed.append(target)
    for path, edit in (
        ("src/pytorch_metric_learning/losses/__init__.py", add_import),
        ("docs/losses.md", add_docs_section),
        ("CONTENTS.md", add_contents_row),
    ):
        target = root / path
        old = target.read_text()
        new = edit(old)
        if new != old:
            target.write_text(new)
            changed.append(target)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pml_sft.upstream", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("pml_dir", help="a pytorch-metric-learning checkout")
    args = parser.parse_args(argv)
    changed = apply(args.pml_dir)
    for path in changed:
        print(f"wrote {path}")
    if not changed:
        print(f"{args.pml_dir} already holds the contribution; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
