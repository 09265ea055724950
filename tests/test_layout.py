"""The house's rules, checked on every run: no module over 600 lines, no class over 400
(tests included), and imports that go one way, ``gateway → protocols → flows``."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
MAX_MODULE, MAX_CLASS = 600, 400


def python_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    files = [ROOT / name for name in listed if (ROOT / name).exists()]
    assert len(files) > 100, "git ls-files found too few modules: not a checkout?"
    return files


def test_no_module_over_600_lines_and_no_class_over_400() -> None:
    """A newcomer reads one concept per module: a module or class that grows past the limit
    is split along its seams rather than let grow."""
    too_long = []
    for path in python_files():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS:
                    too_long.append(f"{path.relative_to(ROOT)}: class {node.name} {length} lines")
    assert too_long == []


def test_imports_go_one_way() -> None:
    """``flows`` (the domain) imports neither ``protocols`` nor ``gateway``; ``protocols``
    does not import ``gateway``: each layer can be read and tested without those above."""
    above = {"flows": ("protocols", "gateway"), "protocols": ("gateway",)}
    wrong = []
    for path in python_files():
        layer = path.relative_to(ROOT).parts[0]
        if layer not in above:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.split(".")[0] in above[layer]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []
