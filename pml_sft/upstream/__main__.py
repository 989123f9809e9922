"""Write the SFTLoss contribution into a pytorch-metric-learning checkout.

    python -m pml_sft.upstream PML_DIR

Copies ``sft_loss.py`` into ``src/pytorch_metric_learning/losses/``, its test into
``tests/losses/``, the equation image into ``docs/imgs/``, and adds the import line,
the ``docs/losses.md`` section and the ``CONTENTS.md`` row, and lets
``utils/distributed.py``'s DistributedLossWrapper accept SFTLoss. An entry already there is
replaced where it stands (the import line is kept as it is); a new one goes before the
first entry whose name sorts after it. Every change is prepared and checked before
anything is written, so a refusal leaves the checkout as it was; files keep their line
endings, symbolic links are never written through, and running it again changes
nothing. Run it from a pml-sft checkout: the test lives in its ``tests/losses/``.
"""

import argparse
import os
import re
import stat
import sys
from pathlib import Path

from .pml_form import pml_form

HERE = Path(__file__).resolve().parent
NAME = "SFTLoss"
MODULE = "sft_loss"
LOSSES = "src/pytorch_metric_learning/losses"
INIT = f"{LOSSES}/__init__.py"
IMPORT_LINE = f"from .{MODULE} import {NAME}\n"
IMPORT_RE = re.compile(rf"^from \.{MODULE} import {NAME}\b")
CONTENTS_ROW = (
    f"| [**{NAME}**](https://kevinmusgrave.github.io/pytorch-metric-learning/losses/"
    f"#{NAME.lower()}) | [Spherical Feature Transform for Deep Metric Learning]"
    "(https://arxiv.org/abs/2008.01469)\n"
)
DISTRIBUTED = "src/pytorch_metric_learning/utils/distributed.py"
REQUIRED = (INIT, DISTRIBUTED, "tests/losses", "docs/losses.md", "CONTENTS.md")
# DistributedLossWrapper accepts SFTLoss, as it accepts CrossBatchMemory (the other
# BaseLossWrapper that takes labels), and refuses efficient=True for both
DISTRIBUTED_EDITS = (
    (
        "from ..losses import BaseMetricLossFunction, CrossBatchMemory\n",
        f"from ..losses import BaseMetricLossFunction, CrossBatchMemory, {NAME}\n",
    ),
    (
        "isinstance(loss, (BaseMetricLossFunction, CrossBatchMemory))",
        f"isinstance(loss, (BaseMetricLossFunction, CrossBatchMemory, {NAME}))",
    ),
    (
        '"The input loss must extend BaseMetricLossFunction or CrossBatchMemory"',
        f'"The input loss must extend BaseMetricLossFunction or be CrossBatchMemory '
        f'or {NAME}"',
    ),
    (
        "if isinstance(loss, CrossBatchMemory) and efficient:",
        f"if isinstance(loss, (CrossBatchMemory, {NAME})) and efficient:",
    ),
    (
        '"CrossBatchMemory with efficient=True is not currently supported"',
        'f"{type(loss).__name__} with efficient=True is not currently supported"',
    ),
)
WRAPPER = f"{LOSSES}/base_loss_wrapper.py"  # SFTLoss subclasses it; new in PML 2.0


class Refusal(Exception):
    """An edit that cannot be made; the message says why."""


def fail(path, reason):
    raise SystemExit(f"{path}: {reason}; nothing was written")


def sources():
    """(source path, path inside the PML checkout) of each copied file."""
    test = HERE.parent.parent / "tests" / "losses" / f"test_{MODULE}.py"
    if not test.is_file():
        raise SystemExit(
            f"cannot find {test}: run this from a pml-sft checkout (the test is in "
            "its tests/losses/, which an installed package does not hold)"
        )
    return [
        (HERE / f"{MODULE}.py", f"{LOSSES}/{MODULE}.py"),
        (test, f"tests/losses/test_{MODULE}.py"),
        (HERE / f"{MODULE}_equation.png", f"docs/imgs/{MODULE}_equation.png"),
    ]


def read_bytes(path):
    try:
        return path.read_bytes()
    except OSError as err:
        fail(path, f"cannot be read ({err.strerror})")


def read_text(path):
    """The file as text, decoded as UTF-8 whatever the locale."""
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as err:
        fail(path, f"is not UTF-8 text (byte {err.start})")


def pml_version(root):
    """``__version__`` of the checkout, or None."""
    try:
        text = (root / "src/pytorch_metric_learning/__init__.py").read_bytes()
    except OSError:
        return None
    found = re.search(rb"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
    return found and found.group(1).decode("utf-8", "replace")


def check_checkout(root):
    missing = [p for p in REQUIRED if not (root / p).exists()]
    if missing:
        raise SystemExit(
            f"{root} is not a pytorch-metric-learning checkout: it has no "
            f"{', '.join(missing)}"
        )
    if not (root / WRAPPER).is_file():
        version = pml_version(root)
        raise SystemExit(
            f"{root} holds pytorch-metric-learning "
            f"{version or 'of unknown version'}, older than 2.0 (it has no {WRAPPER},"
            " which SFTLoss needs); use a checkout of PML 2.0 or newer"
        )


def check_path(root, rel):
    """Refuse a target that is, or lies under, a symbolic link, or lies outside."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            fail(path, "is a symbolic link; refusing to write through it")
    if not path.resolve().is_relative_to(root.resolve()):
        fail(path, "lies outside the checkout")


def check_writable(path):
    """Refuse a file that cannot be replaced or created (the folder gets a temp file)."""
    if path.exists() and not path.is_file():
        fail(path, "is not a regular file")
    if path.exists() and not os.access(path, os.W_OK):
        fail(path, "is read-only")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        fail(folder, "is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(folder, f"is a folder that cannot be written (for {path.name})")


def newline(text):
    """The line ending most lines of ``text`` use."""
    return "\r\n" if 2 * text.count("\r\n") > text.count("\n") else "\n"


def split_lines(text):
    return re.findall(r"[^\n]*\n|[^\n]+", text)


def put_line(lines, new, is_entry, key, same, keep=False):
    """``lines`` holding ``new`` once. The first line that is the ``same`` entry is
    replaced where it stands (left as it is if ``keep``) and later copies dropped;
    without one, ``new`` goes before the first entry whose key is greater than its
    key, or after the last entry."""
    found = [i for i, line in enumerate(lines) if same(line)]
    if found:
        first = lines[found[0]] if keep else new
        rest = [line for i, line in enumerate(lines) if i not in found[1:]]
        return rest[: found[0]] + [first] + rest[found[0] + 1 :]
    entries = [i for i, line in enumerate(lines) if is_entry(line)]
    if not entries:
        raise Refusal(f"has no entry to place {new.strip()!r} among")
    at = next((i for i in entries if key(lines[i]) > key(new)), entries[-1] + 1)
    before = lines[:at]
    if before and not before[-1].endswith("\n"):  # a last line without its line ending
        before[-1] += newline("".join(lines))
    return before + [new] + lines[at:]


def add_import(text):
    lines = put_line(
        split_lines(text),
        IMPORT_LINE.replace("\n", newline(text)),
        is_entry=lambda s: s.startswith("from ."),
        key=str.lower,
        same=IMPORT_RE.match,
        keep=True,
    )
    return "".join(lines)


def add_contents_row(text):
    lines = split_lines(text)
    start = next((i for i, s in enumerate(lines) if s.startswith("### [Losses]")), -1)
    if start < 0:
        raise Refusal("has no '### [Losses]' table")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("#")),
        len(lines),
    )

    def is_row(line):
        return line.startswith("| [**")

    def key(line):
        return line.split("**")[1].lower()

    table = put_line(
        lines[start:end],
        CONTENTS_ROW.replace("\n", newline(text)),
        is_entry=is_row,
        key=key,
        same=lambda s: is_row(s) and key(s) == NAME.lower(),
    )
    return "".join(lines[:start] + table + lines[end:])


def title(section):
    """The lower-case name of a ``## Name`` section."""
    return section.split("\n", 1)[0][3:].strip().lower()


def add_docs_section(text, section):
    """``text`` with ``section`` (LF line endings, one ``## `` heading) in it once:
    replacing the section of the same name (which keeps the blank lines after it)
    or inserted before the first section whose name is greater, or at the end."""
    nl = newline(text)
    section = section.strip("\n").replace("\n", nl)
    head, *sections = re.split(r"(?m)^(?=## )", text)
    if not sections:
        raise Refusal("has no '## ' section")
    found = [i for i, s in enumerate(sections) if title(s) == NAME.lower()]
    if found:
        old = sections[found[0]]
        sections[found[0]] = section + old[len(old.rstrip("\r\n")) :]
        sections = [s for i, s in enumerate(sections) if i not in found[1:]]
        return head + "".join(sections)
    at = next((i for i, s in enumerate(sections) if title(s) > NAME.lower()), None)
    if at is None:
        sections[-1] = sections[-1].rstrip("\r\n") + nl + nl
        return head + "".join(sections) + section + nl
    return head + "".join(sections[:at] + [section + nl + nl] + sections[at:])


def section_text():
    """The ``## SFTLoss`` section, with LF line endings."""
    path = HERE / "losses_section.md"
    text = read_text(path).replace("\r\n", "\n")
    if title(text) != NAME.lower() or re.search(r"(?m)^## ", text[3:]):
        fail(path, f"must hold one '## {NAME}' section and no other '## ' heading")
    return text


def add_to_distributed(text):
    """utils/distributed.py with :data:`DISTRIBUTED_EDITS` made (each once)."""
    ending, text = newline(text), text.replace("\r\n", "\n")
    for old, new in DISTRIBUTED_EDITS:
        if new in text:
            continue
        if old not in text:
            raise Refusal(f"has no {old.strip()!r} to extend with {NAME}")
        text = text.replace(old, new, 1)
    return text.replace("\n", ending)


def plan(root):
    """(path, new bytes) of each file that changes; reads and checks, writes nothing."""
    changes = []
    for source, rel in sources():
        data, target = read_bytes(source), root / rel
        if source.suffix == ".py":  # PML's imports as PML's tree has them
            text = pml_form(data.decode("utf-8"), in_src=rel.startswith("src/"))
            data = text.encode("utf-8")
        if not target.exists() or read_bytes(target) != data:
            changes.append((target, data))
    section = section_text()
    edits = (
        (INIT, add_import),
        ("docs/losses.md", lambda text: add_docs_section(text, section)),
        ("CONTENTS.md", add_contents_row),
        (DISTRIBUTED, add_to_distributed),
    )
    for rel, edit in edits:
        target = root / rel
        old = read_text(target)
        try:
            new = edit(old)
        except Refusal as err:
            fail(target, str(err))
        if new != old:
            changes.append((target, new.encode("utf-8")))
    return changes


def write(path, data):
    """Write ``data`` to a temp file next to ``path``, then move it over ``path``
    (keeping the permissions of a file that was there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if path.exists():
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def apply(root):
    """Write the contribution into the checkout at ``root``; returns the paths
    that changed. Refuses (SystemExit) before writing anything if any file cannot
    be read, edited or written."""
    root = Path(root)
    check_checkout(root)
    rels = [rel for _, rel in sources()]
    rels += [INIT, "docs/losses.md", "CONTENTS.md", DISTRIBUTED]
    for rel in rels:
        check_path(root, rel)
    changes = plan(root)
    for path, _ in changes:
        check_writable(path)
    for done, (path, data) in enumerate(changes):
        try:
            write(path, data)
        except OSError as err:
            written = ", ".join(str(p) for p, _ in changes[:done]) or "none"
            raise SystemExit(f"{path}: cannot be written ({err}); written: {written}")
    return [path for path, _ in changes]


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
