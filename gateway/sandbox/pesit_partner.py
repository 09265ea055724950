"""A PeSIT E server for ``raccord simulate`` and the tests: strict, and able to misbehave.

It serves the *server* side of the same sans-IO machine the requester uses
(:mod:`protocols.pesit.machine`), over TCP or TLS, with or without the 2-byte entity header
and the EBCDIC pre-connection. Deposits (CREATE … TRANS.END) are written under ``depot/`` in a
hidden partial file, fsynced at each sync point before its ACK(SYN), and renamed to their final
name (PI 37 when given, else PI 12 and the transfer id) only once TRANS.END's byte count
matches. A file name that already exists is refused (diagnostic 204): nothing is overwritten
— unless ``on_existing = "overwrite"``, as many real servers do, which makes a double delivery
visible (:attr:`PesitResponder.stores` counts every store of each name).
Files under ``retrait/`` are served to SELECT (by exact name or name prefix, oldest first) with
a SYN every sync interval, and removed once the requester's TRANS.END counts all their bytes.
A read cut short stays: a SELECT with PI 15 = 1 and its PI 13 resumes it from the sync point
the READ names (PI 18); a new SELECT serves it anew.

Write restarts: each transfer's secured point (last acknowledged sync point) is remembered by
(requester, PI 13); a CREATE with PI 15 = 1 resumes there (ACK(WRITE) PI 18), or gets
diagnostic 214 when nothing is known of it.

Strictness: any FPDU out of order, with bad lengths or ids, or a data unit over the entity
size ends the connection with an ABORT carrying the diagnostic, and is recorded in
:attr:`PesitResponder.violations` (tests assert it stays empty). Data or a SYN sent while the
sync window is full is such a violation; with ``window_violation = "idt"`` the responder
answers it like the stricter real servers, with IDT diagnostic 217, and waits for ACK(IDT).
:class:`Faults` injects what real peers do: refuse a login, drop the connection after some
bytes, never acknowledge a sync point, interrupt a write (IDT), answer garbage, go silent.
What the requester does in return is recorded too: the ABORTs it sends
(:attr:`PesitResponder.aborts`) and the IDTs it acknowledges.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from flows import naming
from gateway.sandbox.pesit_connection import Connection, Served, Transfer
from protocols.base import Closing

UPLOAD_DIR = "depot"
DOWNLOAD_DIR = "retrait"


@dataclass
class Faults:
    """What the responder does wrong, set by tests (and ``raccord simulate`` options)."""

    drop_after: int | None = None  # close a write's connection once this many bytes arrived
    withhold_ack_sync: bool = False  # never answer SYN
    garbage: bool = False  # answer CONNECT with bytes that are no FPDU
    silent: bool = False  # accept the TCP connection and never answer
    drop_at_end: bool = False  # store a write's file, then drop the connection unanswered (once)
    drop_read_after: int | None = None  # close a read's connection once this many bytes went
    idt_after: int | None = None  # interrupt a write (IDT) once this many bytes arrived (once)
    idt_diagnostic: int = 213  # … with this diagnostic


@dataclass
class Account:
    password: str | None = None  # None: any password


class PesitResponder(Closing):
    """A PeSIT server on ``host:port`` (0 = any free port) storing under ``root``."""

    def __init__(
        self,
        root: Path,
        accounts: dict[str, Account],
        *,
        server_id: str = "CHORUSPRO",
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        nsdu_header: bool = True,
        pre_connection: bool = False,
        sync_interval_kb: int = 64,
        sync_window: int = 4,
        entity_size: int = 65535,
        on_existing: Literal["refuse", "overwrite"] = "refuse",
        window_violation: Literal["abort", "idt"] = "abort",
    ) -> None:
        self.root = root
        self.accounts = accounts
        self.server_id = server_id
        self.host = host
        self._port = port
        self.tls = tls
        self.nsdu_header = nsdu_header
        self.pre_connection = pre_connection
        self.sync_interval_kb = sync_interval_kb
        self.sync_window = sync_window
        self.entity_size = entity_size
        self.on_existing = on_existing
        self.window_violation = window_violation
        self.faults = Faults()
        self.stores: collections.Counter[str] = collections.Counter()  # name → times stored
        self.aborts: list[int] = []  # diagnostics of the ABORTs the requester sent
        self.interruptions: list[int] = []  # diagnostics of our IDTs the requester acknowledged
        self.violations: list[str] = []
        self.restarts: list[tuple[int, int]] = []  # (transfer id, restart point) answered
        self.received_bytes = 0  # data bytes taken in, resends included
        self.sent_bytes = 0  # data bytes served to reads, resends included
        self.read_restarts: list[tuple[int, int]] = []  # (transfer id, restart point) asked
        self.dropped_at: int | None = None  # received_bytes (sent_bytes) when a drop struck
        self.connections = 0
        self._transfers: dict[tuple[str, int], Transfer] = {}
        self._served: dict[tuple[str, int], Served] = {}  # reads not ended
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    @property
    def port(self) -> int:
        assert self._server is not None, "responder not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def deposits(self) -> Path:
        return self.root / UPLOAD_DIR

    @property
    def returns(self) -> Path:
        return self.root / DOWNLOAD_DIR

    async def __aenter__(self) -> Self:
        self.deposits.mkdir(parents=True, exist_ok=True)
        self.returns.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_server(self._serve, self.host, self._port, ssl=self.tls)
        return self

    async def aclose(self) -> None:
        """Stop serving (leaving ``async with`` calls this)."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        connection = Connection(self, reader, writer)
        try:
            await connection.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # the responder is stopping; asyncio's server callback must not see it
        finally:
            connection.release()
            writer.close()
            # the task ends here either way; a cancelled one must not be logged as an error
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)

    # -- the catalog ------------------------------------------------------------------------

    def _begin(
        self, requester: str, transfer_id: int, label: str, restart: bool, holder: object
    ) -> int | Transfer:
        """A transfer for CREATE, or the diagnostic refusing it. A restart of a transfer that
        another connection still holds (the requester gave up on it, the server has not yet)
        is refused as busy (207): two connections never write one file."""
        key = (requester, transfer_id)
        if restart:
            known = self._transfers.get(key)
            if known is None:
                return 214
            if known.holder is not None and known.holder is not holder:
                return 207
            known.holder = holder
            return known
        name = naming.safe(label)
        if not name or name != label or name.startswith("."):
            return 205
        final = self.deposits / name
        if final.exists() and self.on_existing == "refuse":
            return 204
        transfer = Transfer(
            requester, transfer_id, final, self.deposits / f".{name}.partial", holder=holder
        )
        transfer.partial.write_bytes(b"")
        self._transfers[key] = transfer
        return transfer

    def _finish(self, transfer: Transfer) -> int:
        if transfer.final.exists() and self.on_existing == "refuse":
            return 204
        os.replace(transfer.partial, transfer.final)
        self.stores[transfer.final.name] += 1
        self._transfers.pop((transfer.requester, transfer.transfer_id), None)
        return 0

    def _offer(self, name: str, requester: str) -> Path | None:
        """The oldest file named ``name`` (or starting with it). A file whose read was cut
        short is served anew: its old transfer is forgotten."""
        candidates = sorted(
            (p for p in self.returns.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: (p.stat().st_mtime, p.name),
        )
        found = self._pick(candidates, name)
        if found is not None:
            for key, served in list(self._served.items()):
                if served.path == found and served.requester == requester:
                    del self._served[key]
        return found

    @staticmethod
    def _pick(candidates: list[Path], name: str) -> Path | None:
        for path in candidates:
            if path.name == name:
                return path
        return next((p for p in candidates if p.name.startswith(name)), None)
