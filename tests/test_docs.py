"""The repository's documentation stands on its own."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = re.compile(r"\b(?:CONTRACT|DESIGN|PESIT|STYLE|TESTING)\.md\b")


def test_nothing_cites_a_document_that_is_not_in_the_repository() -> None:
    """Code, tests and docs name only documents a reader of this repository can open (the
    CHANGELOG's history excepted)."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    citing = [
        name
        for name in tracked
        if name != "CHANGELOG.md"
        and name.endswith((".py", ".md", ".toml", ".service"))
        and PRIVATE.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))
    ]
    assert citing == []


def test_every_docs_page_the_readme_links_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\((docs/[a-z_]+\.md)\)", readme)
    assert linked and [page for page in linked if not (ROOT / page).is_file()] == []
