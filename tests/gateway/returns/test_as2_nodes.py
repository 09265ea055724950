"""The AS2 receiver on several nodes behind a load balancer, over one journal: a message is
claimed in the journal before it is stored, so that it is stored by one node only, a resend to
another node gets its MDN without a second store, and a node dying between claim and store
loses nothing (the partner's resend stores it). Real HTTP on loopback, two receivers, each
with its own journal process and node name over one journal file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.folders import Layout
from gateway.journal import Journal, JournalDB
from gateway.returns.as2_receiver import CLAIM_PATIENCE, As2Receiver
from protocols.certs import KeyPair
from tests.as2_config import write_as2_config
from tests.e2e.sshd import free_port
from tests.gateway.returns.test_as2_receiver import (
    STATUS,
    build,
    inbox,
    judged,
    partner_view,
    post,
    stored,
)

CONN = "qualif-as2"
PARTNER = "CTAIFEP"  # its AS2 name in tests/as2_config.py


@pytest.fixture
def config(tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair) -> Config:
    config = write_as2_config(tmp_path, our_keys, partner_keys, receiver_port=free_port())
    Layout(config.gateway.data_dir).create([CONN])
    return config


def node_config(config: Config, shared: bool) -> Config:
    """``config`` on a port of its own; ``shared``: as a node of a shared journal."""
    assert config.as2_receiver is not None
    journal = replace(config.journal, url="postgresql://raccord@db/raccord" if shared else None)
    receiver = replace(config.as2_receiver, port=free_port())
    return replace(config, as2_receiver=receiver, journal=journal)


@asynccontextmanager
async def receivers(
    config: Config, *nodes: str, shared: bool = True
) -> AsyncIterator[list[Config]]:
    """One receiver per node, each on a port of its own: the configurations to post to. The
    journal is the one SQLite file here, whatever ``[journal] url`` says."""
    journals = [Journal(Layout(config.gateway.data_dir).journal, node=n) for n in nodes]
    started: list[As2Receiver] = []
    try:
        for journal in journals:
            await journal.open()
            receiver = As2Receiver(node_config(config, shared), journal)
            await receiver.start()
            started.append(receiver)
        yield [r.config for r in started]
    finally:
        for receiver in started:
            await receiver.stop()
        for journal in journals:
            await journal.close()


def claim(config: Config, node: str, message_id: str, *, age: float = 0.0) -> None:
    """A node's claim on a message, ``age`` seconds old, that it never stored (it died)."""
    db = JournalDB(Layout(config.gateway.data_dir).journal, node=node)
    try:
        assert db.claim_as2_message(PARTNER, message_id, CONN, "") == "claimed"
        at = (datetime.now(UTC) - timedelta(seconds=age)).isoformat(timespec="milliseconds")
        db._db.execute("UPDATE as2_messages SET at=? WHERE message_id=?", (at, message_id))
    finally:
        db.close()


def test_a_message_resent_to_another_node_gets_its_mdn_and_is_stored_once(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """The partner did not get the first node's MDN and resends through the load balancer to
    the second: that one answers "duplicate-document", and nothing is stored twice."""
    view = partner_view(config, partner_keys, our_keys)
    sent = build(view, STATUS, "m-nodes-1")

    async def scenario() -> tuple[Any, Any]:
        async with receivers(config, "node-a", "node-b") as (a, b):
            return await post(a, sent), await post(b, sent)

    first, again = asyncio.run(scenario())
    assert judged(view, sent, first).outcome == "processed"
    assert judged(view, sent, again).duplicate
    assert len(stored(config)) == 1 and len(inbox(config)) == 1


def test_the_same_message_at_both_nodes_at_once_is_stored_once(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """Both nodes read the same message at the same time: one claims and stores it; the other
    answers a positive MDN (stored meanwhile), a duplicate, or 503 (being stored: resend),
    never a second store."""
    view = partner_view(config, partner_keys, our_keys)
    messages = [build(view, STATUS + str(i).encode(), f"m-race-{i}") for i in range(6)]

    async def scenario() -> list[list[Any]]:
        async with receivers(config, "node-a", "node-b") as (a, b):
            return [list(await asyncio.gather(post(a, sent), post(b, sent))) for sent in messages]

    with capture_logs() as logs:
        answers = asyncio.run(scenario())
    received = [e["message_id"] for e in logs if e["event"] == "as2.received"]
    assert sorted(received) == sorted(f"m-race-{i}@partner.test" for i in range(6))
    for sent, pair in zip(messages, answers, strict=True):
        outcomes = []
        for answer in pair:
            if answer[0] == 503:
                outcomes.append("busy")
                continue
            report = judged(view, sent, answer)
            assert report.outcome == "processed"
            outcomes.append("duplicate" if report.duplicate else "processed")
        assert "processed" in outcomes, outcomes
    assert len(stored(config)) == len(messages) == len(inbox(config))


def test_a_claim_whose_node_died_is_taken_over_by_the_resend(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """A node claimed a message and died before storing it: while the claim is fresh a resend
    is told to come back (503, nothing lost: the partner still holds it); once the claim is
    older than CLAIM_PATIENCE the resend is stored and confirmed."""
    view = partner_view(config, partner_keys, our_keys)
    fresh, stale = build(view, STATUS, "m-fresh"), build(view, STATUS + b" ", "m-stale")
    claim(config, "dead-node", "m-fresh@partner.test")
    claim(config, "dead-node", "m-stale@partner.test", age=CLAIM_PATIENCE + 1)

    async def scenario() -> tuple[Any, Any]:
        async with receivers(config, "node-b") as (b,):
            return await post(b, fresh), await post(b, stale)

    busy, taken = asyncio.run(scenario())
    assert busy[0] == 503 and b"send it again later" in busy[2]
    assert judged(view, stale, taken).outcome == "processed"
    (row,) = stored(config)
    assert Path(row["inbox_path"]).read_bytes() == STATUS + b" "


def test_alone_a_claim_left_by_a_crash_does_not_hold_the_resend(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """One node with its SQLite journal: a claim its previous run left unfinished is dropped
    at start, so the partner's resend is stored at once."""
    view = partner_view(config, partner_keys, our_keys)
    sent = build(view, STATUS, "m-crash")
    claim(config, config.gateway.node_name, "m-crash@partner.test")

    async def scenario() -> Any:
        async with receivers(config, config.gateway.node_name, shared=False) as (alone,):
            return await post(alone, sent)

    assert judged(view, sent, asyncio.run(scenario())).outcome == "processed"
    assert len(stored(config)) == 1
