"""The contribution's Python files as they stand in PML's tree.

In pml-sft the files import PML by its package name (they live outside it). In PML's
tree its own modules are imported relatively from ``src/`` and, as PML's isort sees
``pytorch_metric_learning`` as first-party, PML's imports form a section of their
own after the third-party ones (``import torch``).
"""

import ast

PACKAGE = "pytorch_metric_learning"
MAX_LINE = 88  # black's


def import_line(node, in_src):
    """One import statement, isort-formatted; PML's modules relative in ``src``."""
    names = ", ".join(
        a.name + (f" as {a.asname}" if a.asname else "") for a in node.names
    )
    module = node.module
    if in_src and module.startswith(PACKAGE + ".losses."):
        module = "." + module[len(PACKAGE + ".losses.") :]
    elif in_src and module.startswith(PACKAGE + "."):
        module = ".." + module[len(PACKAGE + ".") :]
    line = f"from {module} import {names}"
    if len(line) <= MAX_LINE:
        return line
    return (
        f"from {module} import (\n"
        + "".join(f"    {n.strip()},\n" for n in names.split(","))
        + ")"
    )


def dots(line):
    """The level of a relative ``from`` import (0 for an absolute one)."""
    module = line.split()[1]
    return len(module) - len(module.lstrip("."))


def is_pml(node):
    module = getattr(node, "module", None) or ""
    return isinstance(node, ast.ImportFrom) and module.split(".")[0] == PACKAGE


def pml_form(text, in_src):
    """``text`` with its leading imports of PML regrouped as PML's tree wants them:
    a blank line before them, and (``in_src``) relative, ``..`` before ``.``."""
    body = ast.parse(text).body
    start = 1 if body and isinstance(body[0], ast.Expr) else 0
    block = []
    for node in body[start:]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        block.append(node)
    pml = [node for node in block if is_pml(node)]
    if not pml:
        return text
    lines = text.splitlines(keepends=True)
    first, last = pml[0].lineno - 1, pml[-1].end_lineno
    if any(not is_pml(n) and first < n.lineno - 1 < last for n in block):
        raise ValueError("PML's imports must stand together, after the others")
    formatted = [import_line(node, in_src) for node in pml]
    formatted.sort(key=lambda line: (-dots(line), line))
    head = "".join(lines[:first]).rstrip("\n") + "\n\n"
    return head + "\n".join(formatted) + "\n" + "".join(lines[last:])
