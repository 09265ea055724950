"""Polling partners for return flows: fetch, store durably, hand to the return pipeline.

For every connection whose sender is also a :class:`~protocols.base.ReturnSource`, every
``poll_interval``::

    list ─▶ (already done? skip) ─▶ fetch to inbox/<connection>/.<name>.download (fsynced)
         ─▶ gateway.returns.pipeline.receive (moved into the inbox, journaled, applied)
         ─▶ journal: downloads(stored) ─▶ remote delete | rename | leave ─▶ downloads(done)

A crash anywhere in that line is harmless: a file fetched again is recognised by its bytes
(the return pipeline applies the same bytes once), and one stored but not yet removed is only
removed. Files left at the partner (``after_download = "leave"``) are remembered by name, size
and time, and never fetched twice. A file over ``max_file_size`` is not fetched: it is
remembered as ``refused`` and logged once.

A partner that hands out files one at a time (a :class:`~protocols.base.ReturnQueue`, such as a
PeSIT server) is drained instead, up to ``PULL_LIMIT`` files a round::

    next_return ─▶ .pull.download (fsynced, held unacknowledged) ─▶ gateway.returns.pipeline.receive
         ─▶ journal: downloads(stored) ─▶ acknowledge_return ─▶ downloads(done)

There is nothing to list, so nothing is skipped by name: a file handed out again after a crash
is recognised by its bytes. Any failure ends the round (the next file would most likely be the
same one) and leaves the held file with the partner.

Every connection, whatever brings its returns (polled, pushed over AS2, imported by hand): a
flow sent longer than ``return_deadline`` ago (default 3 days) that no return has spoken of is
logged ``return.overdue`` and alerted ``return_overdue``, once: how far the check has gone is
kept in the journal with its duty, so neither a restart nor another node alerts it again.

Each connection's polling and the overdue check are duties (:mod:`gateway.duties`): with several
nodes sharing a journal, one node at a time does each.
"""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from flows import naming
from gateway import logs
from gateway.config import Config
from gateway.duties import Duties
from gateway.folders import Layout
from gateway.journal import Call, FlowRow, Journal, JournalDB, journal_target
from gateway.ops.alerts import Alerter
from gateway.returns import pipeline as returns
from protocols.base import RemoteFile, ReturnQueue, ReturnSource, Sender
from protocols.errors import (
    AuthenticationError,
    ConnectError,
    FileTooLarge,
    HostKeyError,
    TransferError,
    TransferTimeout,
)

log = logs.get()

#: Errors that say the partner cannot be talked to at all, rather than about one file.
SESSION_ERRORS = (ConnectError, TransferTimeout, AuthenticationError, HostKeyError)

#: Files taken from a ReturnQueue in one round, at most (the round then waits its interval).
PULL_LIMIT = 500
PULL_FILE = ".pull.download"  # in inbox/<connection>/: where a ReturnQueue's file is received
#: Seconds between two looks for sent flows whose return is overdue (deadlines are in days).
OVERDUE_CHECK = 600.0
#: The duty of the overdue check; its mark holds each connection's last cutoff.
OVERDUE_DUTY = "returns.overdue"


def poll_duty(connection: str) -> str:
    """The name of the duty of polling ``connection`` for return flows."""
    return f"returns:{connection}"


Source = ReturnSource | ReturnQueue


def sources(senders: dict[str, Sender]) -> dict[str, Source]:
    """The connections that can be polled for return flows, with their source."""
    return {
        name: cast(Source, sender)
        for name, sender in senders.items()
        if sender.capabilities.receives_returns
    }


async def store(
    config: Config, layout: Layout, connection: str, temp: Path, name: str
) -> returns.Outcome:
    """Move the fetched file ``temp`` into the connection's inbox as the return ``name``,
    journal it in the configured journal under this node's name and apply it (on a worker
    thread, with its own journal connection)."""
    return await asyncio.to_thread(
        functools.partial(
            returns.receive_download,
            layout,
            connection,
            temp,
            name=name,
            resubmit=returns.resubmitting(config),
            journal=journal_target(config, layout),
            node=config.gateway.node_name,
        )
    )


class Poller:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        sources: dict[str, Source],
        alerts: Alerter | None = None,
        duties: Duties | None = None,
    ) -> None:
        self.config = config
        self.alerts = alerts or Alerter(None)
        self.layout = Layout(config.gateway.data_dir)
        self.journal = journal
        self.sources = sources
        self.duties = duties or Duties(journal, lease=config.journal.lease_timeout)
        self._too_large: set[str] = set()  # queue files over the limit, already reported

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.to_thread(self._clean)
        async with asyncio.TaskGroup() as group:
            for connection, source in self.sources.items():
                group.create_task(self._loop(connection, source, stopping))
            group.create_task(self._overdue_loop(stopping))

    # -- returns that never come ----------------------------------------------------------

    async def _overdue_loop(self, stopping: asyncio.Event) -> None:
        async with self.duties.duty(OVERDUE_DUTY) as duty:
            while not stopping.is_set():
                try:
                    await self.check_overdue(held=await duty.held())
                except Exception:  # e.g. the journal's disk is full: try again next round
                    log.exception("return.overdue_check_failed")
                await duty.pause(stopping, OVERDUE_CHECK)

    async def check_overdue(
        self, now: datetime | None = None, *, held: bool
    ) -> dict[str, list[str]]:
        """Flows sent longer than their connection's ``return_deadline`` ago with no return
        status: logged (``return.overdue``) and alerted (``return_overdue``) once each, by the
        node holding the duty (``held``: the loop's own, so that no second holder of it here
        gives it up). Returns the flow ids newly found overdue, by connection."""
        if not held:
            return {}
        now = now or datetime.now(UTC)
        found: dict[str, list[str]] = {}
        for conn in self.config.connections:
            if conn.return_deadline <= 0:
                continue
            before = (now - timedelta(seconds=conn.return_deadline)).isoformat(
                timespec="milliseconds"
            )
            fresh = await self.journal.call(Call(newly_overdue, conn.name, before))
            if not fresh:
                continue
            found[conn.name] = [row.flow_id for row in fresh]
            for row in fresh:
                log.warning(
                    "return.overdue",
                    connection=conn.name,
                    flow_id=row.flow_id,
                    file=row.original_name,
                    remote_name=row.remote_name,
                    sent_at=row.updated_at,
                    action=f"no return flow within return_deadline: look the flow up in Chorus "
                    f"Pro (Suivi des flux), then `raccord import` its return if it came by "
                    f"other means; `raccord flows --flow {row.flow_id}` shows what raccord knows",
                )
            self.alerts.returns_overdue(conn.name, [(r.flow_id, r.original_name) for r in fresh])
        return found

    async def _loop(self, connection: str, source: Source, stopping: asyncio.Event) -> None:
        async with self.duties.duty(poll_duty(connection)) as duty:
            while not stopping.is_set():
                if await duty.held():
                    async with duty.heartbeat():
                        await self._round(connection, source, stopping)
                await duty.pause(stopping, source.poll_interval)

    async def _round(self, connection: str, source: Source, stopping: asyncio.Event) -> None:
        try:
            await self.poll(connection, source, stopping)
        except TransferError as exc:
            log.warning(
                "returns.poll_failed",
                connection=connection,
                reason=exc.reason,
                error=str(exc),
                retry_in=source.poll_interval,
            )
        except Exception:  # a bug must not stop the other connections or the gateway
            log.exception("returns.poll_error", connection=connection)

    async def poll(
        self, connection: str, source: Source, stopping: asyncio.Event | None = None
    ) -> int:
        """One round for one connection; returns the number of files newly stored."""
        if isinstance(source, ReturnQueue):
            return await self._drain(connection, source, stopping)
        stored = 0
        for remote in await source.list_returns():
            if stopping is not None and stopping.is_set():
                break
            try:
                stored += await self._take(connection, source, remote)
            except SESSION_ERRORS:
                raise  # the partner is unreachable: the whole round waits for the next poll
            except TransferError as exc:  # this file only: the others are not held behind it
                log.warning(
                    "return.fetch_failed",
                    connection=connection,
                    remote_name=remote.name,
                    reason=exc.reason,
                    error=str(exc),
                    retry_in=source.poll_interval,
                )
        return stored

    async def _take(self, connection: str, source: ReturnSource, remote: RemoteFile) -> int:
        """Store one remote file (unless done before) and clear it at the partner; 1 if it
        was stored now."""
        outcome = await self._seen(connection, remote)
        if outcome in ("done", "refused"):
            return 0
        stored = 0
        if outcome is None:
            if not await self._store(connection, source, remote):
                return 0
            stored = 1
        action = await source.finish_return(remote)
        await self._remember(connection, remote, "done")
        log.info("return.fetched", connection=connection, remote_name=remote.name, action=action)
        return stored

    async def _seen(self, connection: str, remote: RemoteFile) -> str | None:
        seen = await self.journal.call(
            Call(JournalDB.download, connection, remote.name, remote.size, remote.mtime)
        )
        return str(seen["outcome"]) if seen else None

    async def _store(self, connection: str, source: ReturnSource, remote: RemoteFile) -> bool:
        limit = self.config.gateway.max_file_size
        if remote.size > limit:
            await self._remember(connection, remote, "refused")
            log.error(
                "return.too_large",
                connection=connection,
                remote_name=remote.name,
                size=remote.size,
                action=f"not fetched: over max_file_size ({limit} bytes); fetch it by hand "
                "and use raccord import if it must be applied",
            )
            return False
        inbox = self.layout.inbox(connection)
        temp = inbox / f".{naming.safe(remote.name)}.download"
        try:
            await source.fetch_return(remote, temp)
            outcome = await store(self.config, self.layout, connection, temp, remote.name)
        finally:
            await asyncio.to_thread(functools.partial(temp.unlink, missing_ok=True))
        await self._remember(connection, remote, "stored", outcome.return_id)
        self.alerts.returned(connection, remote.name, outcome)
        return True

    async def _drain(
        self, connection: str, source: ReturnQueue, stopping: asyncio.Event | None
    ) -> int:
        """Take what the queue hands out. Its file is received in PULL_FILE, which is left
        when a read fails: the source may resume it (it truncates what it does not)."""
        limit = self.config.gateway.max_file_size
        temp = self.layout.inbox(connection) / PULL_FILE
        stored = 0
        while stored < PULL_LIMIT and not (stopping is not None and stopping.is_set()):
            try:
                remote = await source.next_return(temp, limit)
            except FileTooLarge as exc:  # handed out again at every round: said once
                if str(exc) not in self._too_large:
                    self._too_large.add(str(exc))
                    log.error("return.too_large", connection=connection, error=str(exc))
                break
            if remote is None:
                break
            try:
                outcome = await store(self.config, self.layout, connection, temp, remote.name)
            except BaseException:
                await source.release_return(remote)
                raise
            stored += 1
            await self._remember(connection, remote, "stored", outcome.return_id)
            self.alerts.returned(connection, remote.name, outcome)
            action = await source.acknowledge_return(remote)
            await self._remember(connection, remote, "done")
            log.info(
                "return.fetched", connection=connection, remote_name=remote.name, action=action
            )
        return stored

    def _clean(self) -> None:
        """Remove downloads a stop or crash interrupted (they are fetched again). A queue's
        read is left: its source may resume it from what it secured."""
        for connection, source in self.sources.items():
            keep = PULL_FILE if isinstance(source, ReturnQueue) else None
            for temp in self.layout.inbox(connection).glob(".*.download"):
                if temp.name != keep:
                    temp.unlink(missing_ok=True)

    async def _remember(
        self, connection: str, remote: RemoteFile, outcome: str, return_id: str | None = None
    ) -> None:
        await self.journal.call(
            Call(
                JournalDB.record_download,
                connection,
                remote.name,
                remote.size,
                remote.mtime,
                outcome=outcome,
                return_id=return_id,
            )
        )


def newly_overdue(db: JournalDB, connection: str, sent_before: str) -> list[FlowRow]:
    """The overdue flows of ``connection`` (sent before ``sent_before``, no return status) not
    reported by an earlier check, this node's or another's: the duty's mark keeps each
    connection's last cutoff, moved on here in the same transaction (one journal call)."""
    marks: dict[str, str] = json.loads(db.duty_mark(OVERDUE_DUTY) or "{}")
    since = marks.get(connection)
    late = db.overdue(connection, sent_before)
    marks[connection] = max(sent_before, since or "")
    if not db.set_duty_mark(OVERDUE_DUTY, json.dumps(marks, sort_keys=True)):
        return []  # the duty moved to another node: it reports them
    return [row for row in late if since is None or row.updated_at >= since]
