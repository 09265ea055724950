"""Protocols by name: the built-ins, plus plugins from the ``raccord.protocols`` entry points.

A plugin is an installed distribution declaring, in its ``pyproject.toml``::

    [project.entry-points."raccord.protocols"]
    myproto = "my_package.module:PLUGIN"

where ``PLUGIN`` is a :class:`protocols.base.ProtocolPlugin`.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from protocols.base import ProtocolPlugin
from protocols.settings import nearest

__all__ = [
    "ENTRY_POINT_GROUP",
    "UnknownProtocol",
    "get",
    "plugins",
]

ENTRY_POINT_GROUP = "raccord.protocols"


class UnknownProtocol(LookupError):
    pass


def _builtins() -> dict[str, ProtocolPlugin]:
    from protocols.as2.sender import PLUGIN as AS2
    from protocols.memory import PLUGIN as MEMORY
    from protocols.pesit.cft import PLUGIN as PESIT_CFT
    from protocols.pesit.sender import PLUGIN as PESIT
    from protocols.piste.sender import PLUGIN as PISTE
    from protocols.sftp.sender import PLUGIN as SFTP

    return {plugin.name: plugin for plugin in (SFTP, AS2, PESIT, PESIT_CFT, PISTE, MEMORY)}


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
    known = plugins()
    if name in known:
        return known[name]
    hint = nearest(name, known)
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    raise UnknownProtocol(
        f"unknown protocol {name!r}; {did_you_mean}known protocols: {', '.join(sorted(known))}"
    )
