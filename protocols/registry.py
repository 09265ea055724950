"""Protocols by name: the built-ins, plus plugins from the ``raccord.protocols`` entry points.

A plugin is an installed distribution declaring, in its ``pyproject.toml``::

    [project.entry-points."raccord.protocols"]
    myproto = "my_package.module:PLUGIN"

where ``PLUGIN`` is a :class:`protocols.base.ProtocolPlugin`.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from protocols.base import ProtocolPlugin
from protocols.settings import nearest

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "UnknownProtocol",
    "get",
    "plugins",
]

ENTRY_POINT_GROUP = "raccord.protocols"


class UnknownProtocol(LookupError):
    pass


#: The built-in protocols by name, and the module whose ``PLUGIN`` each is: imported when a
#: configuration names it (the AS2 stack alone takes a second to import on a busy machine,
#: which ``raccord flows`` on an SFTP-only configuration need not pay).
BUILTINS = {
    "sftp": "protocols.sftp.sender",
    "as2": "protocols.as2.sender",
    "pesit": "protocols.pesit.sender",
    "pesit-cft": "protocols.pesit.cft",
    "piste": "protocols.piste.sender",
    "memory": "protocols.testing.memory",
}


def _builtin(name: str) -> ProtocolPlugin:
    plugin: ProtocolPlugin = importlib.import_module(BUILTINS[name]).PLUGIN
    return plugin


def _builtins() -> dict[str, ProtocolPlugin]:
    return {name: _builtin(name) for name in BUILTINS}


@cache
def plugins() -> dict[str, ProtocolPlugin]:
    """Every known protocol; a built-in name cannot be taken over by a plugin."""
    found = _builtins()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            continue
        plugin = entry.load()
        if not isinstance(plugin, ProtocolPlugin):
            raise TypeError(
                f"entry point {entry.name} = {entry.value} is not a protocols.base.ProtocolPlugin"
            )
        found[entry.name] = plugin
    return found


def get(name: str) -> ProtocolPlugin:
    """The protocol called ``name``.

    Raises:
        UnknownProtocol: with a "did you mean" hint and the list of known protocols.
    """
    if name in BUILTINS:
        return _builtin(name)
    known = plugins()
    if name in known:
        return known[name]
    hint = nearest(name, known)
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    raise UnknownProtocol(
        f"unknown protocol {name!r}; {did_you_mean}known protocols: {', '.join(sorted(known))}"
    )
