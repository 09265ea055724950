"""The asyncio session against the test responder, with the interleavings that matter forced
rather than waited for: a file is delivered once, whatever order the partner's answers come in."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sandbox.pesit_partner import Account, PesitResponder
from protocols.pesit.codec import Kind, Param
from protocols.pesit.session import Broken, FileAttributes, Interrupted, Peer, Session, connect
from tests.gateway.harness import until

PASSWORD = "pw"
INTERVAL_KB = 4


class RacingSession(Session):
    """A session whose DTF.END write yields until the reader task has decoded the ACK(SYN) of
    the last sync point: the interleaving a full socket buffer (or TLS) gives by chance."""

    async def _send(
        self, kind: Kind, *params: Param | None, data: bytes = b"", count: int = 0
    ) -> None:
        await super()._send(kind, *params, data=data, count=count)
        if kind is Kind.DTF_END:
            machine = self.machine
            await until(lambda: machine.last_acked == machine.last_sync, 5, "ACK(SYN) decoded")


async def _racing_session(responder: PesitResponder) -> Session:
    peer = Peer(
        host="127.0.0.1",
        port=responder.port,
        requester="VFE056",
        server="CHORUSPRO",
        password=PASSWORD,
        sync_interval_kb=INTERVAL_KB,
        sync_window=2,
        entity_size=4096,
        timeout=2.0,
    )
    reader, writer = await asyncio.open_connection(peer.host, peer.port)
    session = RacingSession(peer, reader, writer, 1)
    await session.open()
    return session


def test_an_ack_syn_decoded_before_trans_end_is_never_taken_for_its_answer(
    tmp_path: Path,
) -> None:
    """The file ends just past sync point 2; its ACK(SYN) is decoded while DTF.END is being
    written. The session must still wait for it and take it as what it is, then end the
    transfer normally: one store, no ABORT, no restart (before the fix: ACK(SYN) read as the
    answer to TRANS.END, ABORT 317, resume refused 214, the file sent again)."""
    data = os.urandom(2 * INTERVAL_KB * 1024 + 17)
    source = tmp_path / "invoice.xml"
    source.write_bytes(data)

    async def scenario() -> dict[str, Any]:
        root = tmp_path / "partner"
        async with PesitResponder(
            root, {"VFE056": Account(PASSWORD)}, on_existing="overwrite"
        ) as responder:
            session = await _racing_session(responder)
            written = await session.write(
                source, len(data), FileAttributes("FSO1100A", label="inv.xml"), 77, restart=False
            )
            assert session.reusable  # CRF and DESELECT went through: no ABORT
            await session.release()
            return {
                "stores": dict(responder.stores),
                "aborts": responder.aborts,
                "violations": responder.violations,
                "connections": responder.connections,
                "sync_points": written.sync_points,
            }

    seen = asyncio.run(scenario())
    assert seen == {
        "stores": {"inv.xml": 1},
        "aborts": [],
        "violations": [],
        "connections": 1,
        "sync_points": 2,
    }
    assert (tmp_path / "partner" / "depot" / "inv.xml").read_bytes() == data


class LooseSession(Session):
    """A requester that ignores a full window for data (raccord before the fix): it stops
    before a SYN only. (Its machine is told of no window, or it would refuse to be loose.)"""

    async def open(self) -> None:
        await super().open()
        self.machine.window = 0

    async def _room(self) -> None:
        while (fpdu := self._queued()) is not None:
            await self._heard(fpdu)

    async def _send(
        self, kind: Kind, *params: Param | None, data: bytes = b"", count: int = 0
    ) -> None:
        if kind is Kind.SYN:
            await self._room()
            while self.machine.last_sync - self._acked >= self.window:
                await self._heard(await self._next("ACK(SYN)"))
        await super()._send(kind, *params, data=data, count=count)


def test_a_strict_server_interrupts_data_over_the_window_and_the_requester_acknowledges(
    tmp_path: Path,
) -> None:
    """A server that never acknowledges, strict about the window: the loose requester sends
    data after SYN 2 (window 2); the server answers IDT 217; the requester answers ACK(IDT),
    not an ABORT, and learns the diagnostic."""
    data = os.urandom(5 * INTERVAL_KB * 1024)
    source = tmp_path / "invoice.xml"
    source.write_bytes(data)

    async def scenario() -> None:
        async with PesitResponder(
            tmp_path / "partner", {"VFE056": Account(PASSWORD)}, window_violation="idt"
        ) as responder:
            responder.faults.withhold_ack_sync = True
            peer = Peer("127.0.0.1", responder.port, "VFE056", "CHORUSPRO", PASSWORD)
            peer = Peer(**{**peer.__dict__, "sync_interval_kb": INTERVAL_KB, "timeout": 2.0})
            reader, writer = await asyncio.open_connection(peer.host, peer.port)
            session = LooseSession(peer, reader, writer, 1)
            await session.open()
            with pytest.raises(Interrupted) as caught:
                await session.write(source, len(data), FileAttributes("F"), 5, restart=False)
            assert (caught.value.diagnostic, caught.value.end_code) == (217, 4)
            await until(lambda: bool(responder.interruptions), 5, "the ACK(IDT)")
            assert responder.interruptions == [217]
            assert responder.aborts == []
            assert len(responder.violations) == 1
            assert "window is full" in responder.violations[0]
            await session.release()

    asyncio.run(scenario())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    interval_kb=st.integers(1, 3),
    window=st.integers(1, 3),
    sync_points=st.integers(0, 5),
    tail=st.integers(0, 3 * 1024),
    entity_size=st.sampled_from([512, 1500, 4096]),
    acknowledges=st.booleans(),
)
def test_no_data_ever_goes_beyond_the_sync_window(
    interval_kb: int,
    window: int,
    sync_points: int,
    tail: int,
    entity_size: int,
    acknowledges: bool,
) -> None:
    """Over sync intervals, windows, entity sizes and file sizes (around and just past sync
    points), against a server strict about the window: one that acknowledges gets the file
    whole, stored once; one that never acknowledges gets exactly ``window`` sync intervals of
    data (or the whole file if smaller) and then nothing — never a window violation."""
    interval = interval_kb * 1024
    size = sync_points * interval + tail

    async def scenario(root: Path) -> None:
        source = root / "invoice.xml"
        data = os.urandom(size)
        source.write_bytes(data)
        async with PesitResponder(
            root / "partner",
            {"VFE056": Account(PASSWORD)},
            sync_interval_kb=interval_kb,
            sync_window=window,
            window_violation="idt",
            on_existing="overwrite",
        ) as responder:
            responder.faults.withhold_ack_sync = not acknowledges
            peer = Peer(
                "127.0.0.1",
                responder.port,
                "VFE056",
                "CHORUSPRO",
                PASSWORD,
                sync_interval_kb=interval_kb,
                sync_window=window,
                entity_size=entity_size,
                timeout=0.3 if not acknowledges else 5.0,
            )
            session = await connect(peer)
            attributes = FileAttributes("F", label="f")
            try:
                if acknowledges or size <= interval:  # no sync point to wait for
                    await session.write(source, size, attributes, 9, restart=False)
                else:
                    with pytest.raises(Broken, match="ACK\\(SYN\\)") as caught:
                        await session.write(source, size, attributes, 9, restart=False)
                    assert caught.value.timeout
            finally:
                await session.abort(317)
            await until(lambda: bool(responder.aborts), 5, "the responder to read everything")
            assert responder.violations == []
            assert responder.interruptions == []
            if acknowledges or size <= interval:
                assert responder.stores == {"f": 1}
                assert (responder.deposits / "f").read_bytes() == data
            else:
                assert responder.received_bytes == min(size, window * interval)

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(scenario(Path(root)))
