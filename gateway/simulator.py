"""The partner simulator: a stand-in for the Chorus Pro qualification environment on loopback.

Today it serves SFTP (asyncssh's server side): public-key authentication against the keys it is
given, and a chroot-like root folder holding ``depot/`` (uploads) and ``retrait/`` (return flows
to pick up). It is for demos and tests, never for production traffic.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncssh

UPLOAD_DIR = "depot"
DOWNLOAD_DIR = "retrait"


@dataclass(frozen=True)
class SimulatorKeys:
    host_key: Path
    authorized_keys: Path


def generate_keys(folder: Path, client_key: Path) -> SimulatorKeys:
    """Create a host key and authorise ``client_key`` (creating it if missing) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "ssh_host_ed25519_key"
    if not host_key.exists():
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key))
    if not client_key.exists():
        client_key.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="raccord")
        key.write_private_key(str(client_key))
        key.write_public_key(str(client_key) + ".pub")
    client_key.chmod(0o600)
    authorized = folder / "authorized_keys"
    authorized.write_bytes(Path(str(client_key) + ".pub").read_bytes())
    return SimulatorKeys(host_key, authorized)


def known_hosts_line(host_key: Path, host: str, port: int) -> str:
    public = asyncssh.read_private_key(str(host_key)).export_public_key().decode().strip()
    return f"[{host}]:{port} {public}\n"


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True


class SftpSimulator:
    """An SFTP server on ``host`` (port 0 = any free port) serving ``root``."""

    def __init__(self, root: Path, keys: SimulatorKeys, host: str = "127.0.0.1", port: int = 0):
        self.root = root
        self.keys = keys
        self.host = host
        self._port = port
        self._server: asyncssh.SSHAcceptor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return int(self._server.get_port())

    async def __aenter__(self) -> Self:
        (self.root / UPLOAD_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / DOWNLOAD_DIR).mkdir(parents=True, exist_ok=True)
        root = str(self.root).encode()

        def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return asyncssh.SFTPServer(chan, chroot=root)

        self._server = await asyncssh.listen(
            self.host,
            self._port,
            server_host_keys=[str(self.keys.host_key)],
            authorized_client_keys=str(self.keys.authorized_keys),
            server_factory=_Server,
            sftp_factory=sftp_factory,
            allow_scp=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
