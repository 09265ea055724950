"""SFTP sender (asyncssh): key authentication, strict host keys, upload-then-rename.

The uploads run in a worker process of their own (:mod:`protocols.offload`: asyncssh's CPU
per file no longer competes with the daemon's event loop), over one SSH connection and one SFTP
session, opened on first use and reused; up to ``max_parallel`` uploads share the session (SFTP
multiplexes requests on one channel). ``check`` and the return flows use a session of the
daemon's own, opened when first needed. Each file
is written under a temporary name (``temp_prefix`` + remote name + ``temp_suffix``) and renamed
to its final name with the plain SFTP rename, which never overwrites: a final name that already
exists is either our own earlier delivery (same size: the resend is recognised and nothing is
sent twice) or a conflict that needs a person.

With ``download_dir`` set, the same session also fetches return flows (:class:`ReturnSource`):
regular files whose names are not hidden or temporary, oldest first; once the gateway has
stored one, it is deleted, renamed with ``done_suffix``, or left (``after_download``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Self, TypeVar

import asyncssh

from protocols.base import Capabilities, Closing, Outbound, ProtocolPlugin, Receipt, RemoteFile
from protocols.coalescing import Coalescing
from protocols.errors import (
    AuthenticationError,
    ConnectError,
    RemoteBusy,
    RemoteNameConflict,
    TransferTimeout,
)
from protocols.offload import SendingProcess
from protocols.sftp.settings import (
    SftpSettings,
    failure,
    local_files,
    parse_settings,
    translated,
)
from protocols.sftp.upload import (
    ONE_WRITE,
    SMALL_FILE,
    Progress,
    exists,
    fsync_size,
    quietly_remove,
    remote_sha256,
    rename,
    sha256,
    upload,
)

__all__ = [
    "ABORT_PATIENCE",
    "CIPHERS",
    "ONE_WRITE",
    "PLUGIN",
    "SMALL_FILE",
    "Progress",
    "SftpSender",
    "SftpSettings",
    "parse_settings",
]

T = TypeVar("T")

#: Seconds an operation gets to end once its connection is aborted, and a clean close to end.
ABORT_PATIENCE = 5.0

#: Ciphers offered, best first. asyncssh's default puts chacha20-poly1305 first, which it runs
#: as several cipher objects per packet; AES-GCM is one call per packet (AES-NI), and costs the
#: client far less CPU per file (docs/performance.md). The others stay offered for servers
#: without AES-GCM.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


#: Names never fetched from download_dir: someone is still writing them.
_TEMPORARY = (".tmp", ".part", ".filepart")


class SftpSender(Closing):
    protocol = "sftp"
    capabilities = Capabilities(atomic_rename=True, detects_resend=True, receives_returns=True)

    def __init__(self, settings: SftpSettings, *, own_process: bool = True) -> None:
        """``own_process``: uploads run in a worker process (False: here, as that worker
        does)."""
        self._settings = settings
        self._uploads = (
            SendingProcess(_uploader, settings, f"sftp {settings.username}@{settings.host}")
            if own_process
            else None
        )
        self.poll_interval = settings.poll_interval
        if settings.download_dir is None:  # nothing to poll on this connection
            self.capabilities = Capabilities(atomic_rename=True, detects_resend=True)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.max_parallel)
        self._preparing: asyncio.Task[None] | None = None
        self._keys: Sequence[asyncssh.SSHKeyPair] | None = None  # loaded once, off the loop

    async def __aenter__(self) -> Self:
        if self._uploads is not None:
            await self._uploads.start()  # not on the first file's time
        return self

    def prepare(self) -> None:
        """Open the upload session in the background (see :class:`~protocols.base.Prepares`)."""
        if self._uploads is not None:
            self._uploads.prepare()
        elif self._sftp is None and self._preparing is None and not self._lock.locked():
            self._preparing = asyncio.create_task(self._prepare(), name="sftp-prepare")

    async def _prepare(self) -> None:
        try:
            with contextlib.suppress(Exception):  # the send that follows meets it and reports it
                await self._session()
        finally:
            self._preparing = None

    async def aclose(self) -> None:
        if self._uploads is not None:
            await self._uploads.aclose()
        if self._preparing is not None:
            self._preparing.cancel()
            await asyncio.wait({self._preparing})
        await self._close_session()

    async def _close_session(self) -> None:
        sftp, conn = self._sftp, self._conn
        self._sftp = self._conn = None
        if sftp is not None:
            sftp.exit()
        if conn is not None:
            conn.close()
            # A clean close flushes what we wrote; a server that stopped reading never lets
            # it finish: then the connection is dropped.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(conn.wait_closed()), ABORT_PATIENCE)
            if not conn.is_closed():
                conn.abort()

    def _abort(self) -> None:
        """Drop the connection at once: every request under way fails with ConnectionLost."""
        conn = self._conn
        self._sftp = self._conn = None
        if conn is not None:
            conn.abort()

    async def _bounded(
        self, operation: Coroutine[Any, Any, T], progress: Progress | None = None
    ) -> T:
        """``operation``, as long as it does not stall for the settings' ``timeout``; and
        cancellable.

        With ``progress`` (a transfer), each block the partner acknowledges starts the
        ``timeout`` afresh: a slow link delivers a large file, however long it takes; without,
        the operation (one request) must end within ``timeout``.

        asyncssh does not give up a request the server stopped answering: a cancelled put()
        waits for the answers to the writes it sent (measured against an sshd stopped with
        SIGSTOP: for ever, so neither the timeout nor a SIGTERM ended the transfer). On a
        stall or a cancellation the connection is aborted, which fails those requests; the
        operation then ends within ABORT_PATIENCE, and the next one connects afresh.
        """
        task = asyncio.ensure_future(operation)
        timeout = self._settings.timeout
        try:
            last = time.monotonic()
            while True:
                if progress is not None:
                    last = progress.last
                remaining = last + timeout - time.monotonic()
                if remaining > 0 and await _finished_within(task, remaining):
                    return task.result()
                if progress is not None and progress.last > last:
                    continue  # the partner took more meanwhile
                if progress is None:
                    raise TimeoutError(f"no answer from the partner for {timeout:g} s")
                raise TimeoutError(
                    f"stalled: no progress for {timeout:g} s ({progress.done} of "
                    f"{progress.total} bytes {progress.what}); the network or the "
                    "partner stopped, it will be tried again (timeout sets how long a transfer "
                    "may make no progress)"
                )
        except BaseException:
            if not task.done():
                self._abort()
                await asyncio.wait({task}, timeout=ABORT_PATIENCE)
                task.add_done_callback(_retrieve)
            raise

    async def _session(self) -> asyncssh.SFTPClient:
        async with self._lock:
            if self._sftp is not None and self._conn is not None and not self._conn.is_closed():
                return self._sftp
            await self._close_session()
            s = self._settings
            local_files(s)
            with translated("connect", s):
                if self._keys is None:
                    # Decrypting a passphrase-protected key is costly (a bcrypt KDF):
                    # once per sender, in a thread, not at every connection on the loop.
                    passphrase = s.passphrase.value if s.passphrase else None
                    try:
                        self._keys = await asyncio.to_thread(
                            asyncssh.load_keypairs, [str(s.private_key)], passphrase
                        )
                    except OSError as exc:
                        raise AuthenticationError(
                            f"cannot read the private key {s.private_key} "
                            f"({exc.strerror or exc}); check private_key"
                        ) from None
                self._conn = await asyncssh.connect(
                    s.host,
                    s.port,
                    username=s.username,
                    client_keys=self._keys,
                    known_hosts=str(s.known_hosts),
                    connect_timeout=s.connect_timeout,
                    agent_path=None,
                    config=None,
                    preferred_auth="publickey",
                    keepalive_interval=30,
                    encryption_algs=list(CIPHERS),
                    tunnel=Coalescing(),  # see coalescing.py
                )
                self._sftp = await asyncio.wait_for(self._conn.start_sftp_client(), s.timeout)
            return self._sftp

    def _remote(self, name: str) -> str:
        return str(PurePosixPath(self._settings.upload_dir) / name)

    async def send(self, flow: Outbound) -> Receipt:
        if self._uploads is not None:
            return await self._uploads.send(flow)
        s = self._settings
        final = self._remote(flow.remote_name)
        temp = self._remote(f"{s.temp_prefix}{flow.remote_name}{s.temp_suffix}")
        async with self._slots:
            try:
                sftp = await self._session()
                with translated(f"upload of {flow.remote_name}", s):
                    if flow.resend:
                        receipt = await self._already_there(sftp, flow, final)
                        if receipt is not None:
                            return receipt
                    progress = Progress(flow.size)
                    uploaded = upload(sftp, flow, temp, progress)
                    await self._bounded(uploaded, progress)
                    if not await self._bounded(rename(sftp, temp, final)):
                        if not await self._bounded(exists(sftp, final)):
                            # Not a name taken: the partner's disk or folder refused it.
                            said = failure(f"rename of {flow.remote_name}", "Failure", s.upload_dir)
                            raise RemoteBusy(said) from None
                        receipt = await self._already_there(sftp, flow, final)
                        if receipt is None:
                            await quietly_remove(sftp, temp)
                            raise RemoteNameConflict(
                                f"{final} already exists on {s.host} with other content; "
                                "it was not overwritten"
                            ) from None
                        await quietly_remove(sftp, temp)
                        return receipt
            except (TransferTimeout, ConnectError):
                await self._close_session()  # it may be wedged; start afresh next time
                raise
        return Receipt(
            self.protocol,
            flow.remote_name,
            {"host": s.host, "port": s.port, "path": final, "temp_path": temp},
        )

    async def _already_there(
        self, sftp: asyncssh.SFTPClient, flow: Outbound, final: str
    ) -> Receipt | None:
        try:
            attrs = await self._bounded(sftp.stat(final))
        except asyncssh.SFTPNoSuchFile:
            return None
        if attrs.size != flow.size:
            return None
        # Same size is not same file: read it back (only on a resend or a name conflict, both
        # rare) and compare digests, so other bytes are never taken for ours.
        expected = flow.sha256 or await asyncio.to_thread(sha256, flow.path)
        progress = Progress(flow.size, "read back")
        if await self._bounded(remote_sha256(sftp, final, progress), progress) != expected:
            return None
        return Receipt(
            self.protocol,
            flow.remote_name,
            {"host": self._settings.host, "path": final, "found_on_resend": True},
            already_delivered=True,
        )

    async def check(self) -> str:
        s = self._settings
        sftp = await self._session()
        with translated("listing upload_dir", s):
            await self._bounded(sftp.stat(s.upload_dir))
        await self._close_session()
        return (
            f"sftp://{s.username}@{s.host}:{s.port}{s.upload_dir} (host key verified, key accepted)"
        )

    # -- return flows (ReturnSource) ------------------------------------------------------

    def _download(self, name: str) -> str:
        assert self._settings.download_dir is not None
        return str(PurePosixPath(self._settings.download_dir) / name)

    def _waiting(self, name: str) -> bool:
        lowered = name.lower()
        return not (
            name.startswith(".")
            or lowered.endswith(_TEMPORARY)
            or (
                self._settings.after_download == "rename"
                and lowered.endswith(self._settings.done_suffix.lower())
            )
        )

    async def list_returns(self) -> list[RemoteFile]:
        s = self._settings
        if s.download_dir is None:
            return []
        async with self._slots:
            try:
                sftp = await self._session()
                with translated(f"listing {s.download_dir}", s, s.download_dir):
                    entries = await self._bounded(sftp.readdir(s.download_dir))
            except (TransferTimeout, ConnectError):
                await self._close_session()
                raise
        found = []
        for entry in entries:
            name = (
                entry.filename if isinstance(entry.filename, str) else os.fsdecode(entry.filename)
            )
            attrs = entry.attrs
            if attrs.permissions is not None and not stat.S_ISREG(attrs.permissions):
                continue
            if self._waiting(name):
                found.append(RemoteFile(name, attrs.size or 0, int(attrs.mtime or 0)))
        return sorted(found, key=lambda f: (f.mtime, f.name))

    async def fetch_return(self, remote: RemoteFile, local: Path) -> None:
        s = self._settings
        source = self._download(remote.name)
        async with self._slots:
            try:
                sftp = await self._session()
                with translated(f"download of {remote.name}", s, s.download_dir):
                    progress = Progress(remote.size, "received")
                    download = sftp.get(
                        source, str(local), block_size=ONE_WRITE, progress_handler=progress.handler
                    )
                    await self._bounded(download, progress)
            except (TransferTimeout, ConnectError):
                await self._close_session()
                raise
        fetched = await asyncio.to_thread(fsync_size, local)
        if fetched != remote.size:
            raise RemoteBusy(
                f"download of {remote.name}: got {fetched} bytes, the listing said {remote.size}; "
                "the partner may still be writing it, it will be fetched again"
            )

    async def finish_return(self, remote: RemoteFile) -> str:
        s = self._settings
        if s.after_download == "leave":
            return "left"
        source = self._download(remote.name)
        async with self._slots:
            sftp = await self._session()
            with translated(f"{s.after_download} of {remote.name}", s, s.download_dir):
                if s.after_download == "delete":
                    await self._bounded(sftp.remove(source))
                    return "deleted"
                await self._bounded(sftp.rename(source, source + s.done_suffix))
                return "renamed"


def _uploader(settings: SftpSettings) -> SftpSender:
    """The sender of the upload worker process (see :class:`SendingProcess`)."""
    return SftpSender(settings, own_process=False)


async def _finished_within(task: asyncio.Future[Any], seconds: float) -> bool:
    """Whether ``task`` ends within ``seconds``; cancelling the caller leaves ``task``
    running (as a shield would). One future and one timer: asyncio.wait_for around a shield
    costs the upload process more at every upload."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(seconds, wake, None)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned operation's outcome as seen (its error was reported another way)."""
    if not task.cancelled():
        task.exception()


PLUGIN = ProtocolPlugin(
    name="sftp",
    parse_settings=parse_settings,
    create_sender=SftpSender,
    secret_fields=frozenset({"passphrase"}),
    capabilities=SftpSender.capabilities,
)
