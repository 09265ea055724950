"""Shared fixtures: sample invoices and small builders."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def sample(name: str) -> bytes:
    """A sample shipped with raccord (gateway/samples), as bytes."""
    return (resources.files("gateway") / "samples" / name).read_bytes()


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    """write(name, data) -> Path: a file in a fresh folder."""

    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write
