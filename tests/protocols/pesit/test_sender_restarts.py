"""A PeSIT flow whose transfer broke is never stored twice nor lost, whatever the partner
kept: resumed, sent anew from offset 0 only when the partner cannot hold it, or left
"possibly delivered" for the operator.

The dispatcher's view: every resend is a fresh sender (a restarted daemon knows only the
marker on disk); the partner may forget its transfers (restarted: its catalog is gone, a
partial file stays on its disk) and may refuse or overwrite an existing name."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sandbox.pesit_partner import PesitResponder
from protocols.base import Outbound, outcome_marker
from protocols.errors import TransferError
from tests.protocols.pesit.test_sender import _flow, _responder, _send, _settings

SIZE = 5 * 4096 + 300  # sync points every 4 KB: five of them, and a tail
NAME = "FSO1100A_VFE056_a.xml"


async def _until_filed(
    tmp_path: Path, responder: PesitResponder, flow: Outbound, probed: list[int]
) -> str:
    """Resend ``flow`` as the dispatcher does until it is sent ("sent") or refused for the
    operator ("possibly delivered"); ``probed`` gets the data bytes each probe cost."""
    for _ in range(6):
        before = responder.received_bytes
        failed: TransferError | None = None
        try:
            await _send(_settings(responder, restarts=0), replace(flow, resend=True))
        except TransferError as exc:
            failed = exc
        if failed is None:
            return "sent"
        if not failed.retryable:
            assert "may have stored it" in str(failed)
            probed.append(responder.received_bytes - before)
            return "possibly delivered"
    raise AssertionError("never filed")


@settings(max_examples=24, deadline=None)
@given(
    cut=st.one_of(st.just(-1), st.integers(1, SIZE)),  # -1: stored, dropped before its ACK
    overwrite=st.booleans(),
    partner_forgets=st.booleans(),
)
def test_a_broken_transfer_ends_stored_once_and_intact(
    cut: int, overwrite: bool, partner_forgets: bool
) -> None:
    """Cut anywhere (or after the partner stored it), then resent by restarted daemons to a
    partner that may have forgotten the transfer: the file is stored once, intact. A resend
    from offset 0 happens only where the partner cannot hold the file; where it may, the
    flow is "possibly delivered" and the probe sends no data; the operator's retry, made only
    when the partner says it does not hold the file, then delivers it once."""
    data = os.urandom(SIZE)
    with tempfile.TemporaryDirectory() as folder:
        tmp_path = Path(folder)
        options = {"on_existing": "overwrite" if overwrite else "refuse"}
        outcome, probed, stores = asyncio.run(
            _scenario(tmp_path, data, cut, options, partner_forgets)
        )
        stored = tmp_path / "partner" / "depot" / NAME
        assert stored.read_bytes() == data
        assert sum(stores) == 1, (outcome, stores)
        assert probed in ([], [0])


async def _scenario(
    tmp_path: Path, data: bytes, cut: int, options: dict[str, str], partner_forgets: bool
) -> tuple[str, list[int], list[int]]:
    flow = _flow(tmp_path, data)
    stores: list[int] = []
    probed: list[int] = []
    responder = _responder(tmp_path, **options)
    async with responder:
        if cut < 0:
            responder.faults.drop_at_end = True
        else:
            responder.faults.drop_after = cut
        try:
            await _send(_settings(responder, restarts=0), flow)
        except TransferError as exc:
            first: TransferError | None = exc
        else:
            first = None
        assert first is None or first.retryable  # the dispatcher comes back with a resend
        if not partner_forgets:
            outcome = await _until_filed(tmp_path, responder, flow, probed)
            stores.append(responder.stores[NAME])
    if partner_forgets:  # restarted: no transfer known, the hidden partial file stays
        stores.append(responder.stores[NAME])
        responder = _responder(tmp_path, **options)
        async with responder:
            outcome = await _until_filed(tmp_path, responder, flow, probed)
            stores.append(responder.stores[NAME])
    if outcome == "possibly delivered" and not (tmp_path / "partner" / "depot" / NAME).exists():
        # The operator asked, the partner does not hold it: raccord retry. (Filing the flow
        # in error/ removed its marker.)
        outcome_marker(flow.path, flow.flow_id).unlink(missing_ok=True)
        responder = _responder(tmp_path, **options)
        async with responder:
            await _send(_settings(responder), replace(flow, resend=True))
            stores.append(responder.stores[NAME])
    return outcome, probed, stores
