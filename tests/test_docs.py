"""Every Python block of README.md and docs/*.md runs as written, or is a signature
block (calls of pml_sft objects with their parameters and defaults) that matches the
code, or is marked ``<!-- fragment -->`` on the line before it."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import pml_sft

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks():
    out = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"(?m)^```python\n(.*?)^```", text, re.S):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            line = text[: match.start()].count("\n") + 1
            out.append((f"{page.name}:{line}", match.group(1), before))
    return out


def is_signature(tree):
    return all(
        isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Call)
        and ast.unparse(s.value.func).startswith("pml_sft.")
        for s in tree.body
    )


def resolve(dotted):
    obj = pml_sft
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)  # (an AttributeError: the docs name what is not)
    return obj


def check_signature(call):
    obj = resolve(ast.unparse(call.func))
    params = inspect.signature(obj).parameters
    kinds = {p.kind for p in params.values()}
    names = [a.id for a in call.args]
    assert names == list(params)[: len(names)], (names, list(params))
    for keyword in call.keywords:
        if keyword.arg is None:  # **kwargs
            assert inspect.Parameter.VAR_KEYWORD in kinds
            continue
        assert keyword.arg in params, keyword.arg
        default = params[keyword.arg].default
        assert ast.literal_eval(keyword.value) == default, (keyword.arg, default)


@pytest.mark.parametrize("where,code,before", blocks(), ids=[b[0] for b in blocks()])
def test_python_block(where, code, before):
    if before.strip() == "<!-- fragment -->":
        return
    tree = ast.parse(code)
    if is_signature(tree):
        for statement in tree.body:
            check_signature(statement.value)
    else:
        exec(compile(tree, where, "exec"), {})
