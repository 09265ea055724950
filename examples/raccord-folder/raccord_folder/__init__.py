"""``protocol = "folder"``: deliver each flow into a local folder, atomically.

A complete raccord protocol plugin in one module — settings, sender, plugin object::

    [connection.folder]
    path = "/srv/transfer/out"     # must exist and be writable by raccord

The file is written as ``.<remote name>.part``, flushed to disk, then renamed to its remote
name, so whoever watches the folder never sees half a file. A resend finds a file already there
with the same bytes and reports it delivered rather than writing it twice.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from protocols.base import Capabilities, Closing, Outbound, ProtocolPlugin, Receipt
from protocols.errors import RemoteNameConflict, RemotePermissionDenied
from protocols.settings import Section, SettingsError


@dataclass(frozen=True)
class FolderSettings:
    path: Path


def parse_settings(section: Section) -> FolderSettings:
    path = section.path("path")
    assert path is not None  # required: Section.path raised otherwise
    if not path.is_dir():
        raise SettingsError(section.key("path"), f"{path} is not a folder")
    section.finish()  # unknown keys are errors, with a "did you mean"
    return FolderSettings(path)


class FolderSender(Closing):
    protocol = "folder"
    capabilities = Capabilities(atomic_rename=True, detects_resend=True)

    def __init__(self, settings: FolderSettings) -> None:
        self._settings = settings

    async def send(self, flow: Outbound) -> Receipt:
        return await asyncio.to_thread(self._write, flow)

    def _write(self, flow: Outbound) -> Receipt:
        final = self._settings.path / flow.remote_name
        data = flow.path.read_bytes()
        if final.exists():
            if final.read_bytes() == data:
                return Receipt(self.protocol, flow.remote_name, already_delivered=True)
            raise RemoteNameConflict(f"{final} exists with other content; it was not replaced")
        temp = final.with_name(f".{flow.remote_name}.part")
        try:
            with temp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(temp, final)
        except PermissionError as exc:
            message = f"cannot write in {final.parent}: {exc.strerror}"
            raise RemotePermissionDenied(message) from None
        return Receipt(self.protocol, flow.remote_name, {"path": str(final)})

    async def check(self) -> str:
        if not os.access(self._settings.path, os.W_OK):
            raise RemotePermissionDenied(f"{self._settings.path} is not writable")
        return f"folder {self._settings.path} (writable)"


PLUGIN = ProtocolPlugin(
    name="folder",
    parse_settings=parse_settings,
    create_sender=FolderSender,
    capabilities=FolderSender.capabilities,
)
