"""The plugin API (what a protocol plugin imports) is explicit and typed."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import protocols

API_MODULES = ["protocols.base", "protocols.errors", "protocols.settings", "protocols.registry"]


@pytest.mark.parametrize("name", API_MODULES)
def test_all_names_exactly_the_public_things_the_module_defines(name: str) -> None:
    """A plugin author reads __all__ to know what is promised: every public class, function and
    constant defined in the module is in it, and nothing else."""
    module = importlib.import_module(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (
            (
                (inspect.isclass(value) or callable(value))
                and getattr(value, "__module__", None) == name
            )
            or attr.isupper()
        )
    }
    assert set(module.__all__) == defined


def test_the_package_says_it_is_typed() -> None:
    """PEP 561: without py.typed, mypy ignores raccord's annotations in a plugin's code."""
    assert (Path(protocols.__file__).parent / "py.typed").is_file()
