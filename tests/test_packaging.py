"""What ``pip install .`` (the demo command's install) actually ships: every module of the
source tree, the samples ``raccord demo`` drops, and the web console's templates and
stylesheet. An editable install hides a package missing from the build configuration; this
builds the real wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "protocols", "gateway")
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")


def test_the_wheel_holds_every_module_and_sample(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a clean copy: no build/ left over from an earlier install
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=_CACHES)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=240,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("raccord-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (
            path.suffix == ".py"
            or {"samples", "templates", "static"} & set(path.parts)
            or path.name == "py.typed"
        )
    }
    assert expected, "no source files found"
    assert "protocols/pesit/sender.py" in expected
    assert "gateway/web/templates/flows.html" in expected  # the console's pages and stylesheet
    assert sorted(expected - shipped) == []
