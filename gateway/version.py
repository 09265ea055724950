"""What ``raccord --version`` prints and ``raccord_build_info`` labels: raccord's version, then
one line per component whose version matters to a support request (add yours to
:func:`components`)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def raccord() -> str:
    """The installed distribution's version ("unknown" when run from a bare source tree)."""
    try:
        return version("raccord")
    except PackageNotFoundError:
        return "unknown"


def components() -> list[tuple[str, str]]:
    """``(name, version)`` of what else identifies this build, in the order printed."""
    return [("python", platform.python_version())]


def describe() -> str:
    """``raccord X.Y.Z`` then ``  name version`` per component, one per line."""
    lines = [f"raccord {raccord()}"]
    lines += [f"  {name} {value}" for name, value in components()]
    return "\n".join(lines)
