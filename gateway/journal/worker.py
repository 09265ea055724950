"""The journal process and its async façade: :class:`Journal`, :class:`Call`, :func:`serve`.

Calls made while a batch runs are *group-committed*: every pending call goes in the next
batch, which runs in one transaction and commits once. A call that fails without writing (a
state conflict) fails alone; one that fails after writing makes the batch roll back and run
again one call per transaction, so each call applies entirely or not at all. So does a batch
that PostgreSQL ended to settle a conflict with another node's transaction (a deadlock).
On PostgreSQL, the batch's calls that make the same move for different flows run first, as
one statement each (:mod:`gateway.journal.bulk`); the others run as before.

A call travels pickled: a :class:`JournalDB` method (pickled by reference, as the module and
name of the class that defines it) or a module-level function of any module the journal
process can import, with plain values as arguments.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from gateway.batching import Batcher, WorkerDied, WorkerProcess, answer_batches
from gateway.journal.bulk import coalesce
from gateway.journal.db import JournalDB
from gateway.journal.errors import JournalUnavailable
from gateway.journal.target import JournalTarget

T = TypeVar("T")

JournalCall = Callable[[JournalDB], Any]


P = ParamSpec("P")


class Call(Generic[T]):
    """A journal call that can travel to the journal process: ``function(db, *args, **kwargs)``.

    ``function`` is a :class:`JournalDB` method or a module-level function taking the database
    first, the arguments plain values; mypy checks them against ``function``'s signature.
    Example: ``await journal.call(Call(JournalDB.get, flow_id))``.
    """

    __slots__ = ("args", "function", "kwargs")

    def __init__(
        self, function: Callable[Concatenate[JournalDB, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> None:
        self.function: Callable[..., T] = function
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs

    def __call__(self, db: JournalDB) -> T:
        return self.function(db, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Call({self.function.__qualname__}, {', '.join(arguments)})"


class Journal:
    """Async façade: the calls run in the journal's own process, group-committed.

    The process has its own interpreter: the SQLite work (each step of which releases and
    re-takes the GIL) no longer competes with the event loop (in a thread of the daemon, a
    call spent most of its time waiting for the GIL the busy loop held). Calls are pickled by
    the caller (a call that cannot travel fails there, alone) and sent in batches: one round
    trip per batch. The process ends when the journal is closed, or when the daemon dies (it
    finishes the batch under way, whose commit is then found by the next start like any
    other). If it dies, the batch under way fails with :class:`JournalUnavailable` and the
    next batch starts a new one.
    """

    def __init__(self, target: JournalTarget, *, node: str | None = None) -> None:
        self.target = target
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._worker = WorkerProcess("raccord-journal", serve, target, node)
        self._open = False
        self._batcher: Batcher[bytes, Any] = Batcher(self._run_batch, executor=self._executor)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._worker.start)
        self._open = True

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._batcher.idle()
            await asyncio.get_running_loop().run_in_executor(self._executor, self._worker.stop)
        self._executor.shutdown(wait=True)

    async def call(self, method: Callable[[JournalDB], T]) -> T:
        """Run ``method(db)`` in the journal process, atomically (in its own savepoint).

        ``method`` is a :class:`Call`, or anything else that pickles.

        Raises:
            TypeError: ``method`` cannot be sent to the journal process (a programming error).
            JournalUnavailable: the journal process died while running the batch.
        """
        if not self._open:
            raise RuntimeError("journal is not open")
        try:
            sent = pickle.dumps(method, pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"journal call {method!r} cannot be sent: {exc}") from None
        result: T = await self._batcher.submit(sent)
        return result

    async def knows(self, flow_id: str) -> bool:
        """Whether ``flow_id`` is in the journal: after a :class:`JournalUnavailable`, whether
        the call that recorded it was applied."""
        return await self.call(Call(JournalDB.get, flow_id)) is not None

    def _run_batch(self, calls: list[bytes]) -> list[Any]:
        """Send a batch to the journal process and wait for its outcomes (journal thread)."""
        try:
            answers = self._worker.run(calls)
        except WorkerDied as exc:
            return [
                JournalUnavailable(
                    f"{exc} during this call; whether it was applied is unknown: the next "
                    "start reconciles the journal"
                )
            ] * len(calls)
        except Exception as exc:  # it could not be started again (e.g. the disk is gone)
            return [exc] * len(calls)
        return [_unpickled(answer) for answer in answers]


def _unpickled(answer: bytes) -> Any:
    try:
        return pickle.loads(answer)  # noqa: S301 - from our own journal process
    except Exception as exc:
        return JournalUnavailable(f"unreadable answer from the journal process: {exc!r}")


def serve(target: JournalTarget, node: str | None, pipe: Any) -> None:
    """The journal process: open ``target``, then run the batches that come through ``pipe``."""
    try:
        db = JournalDB(target, node=node)
        if not db.postgres:
            # Statement journals in memory: each UPDATE with its history trigger, inside a
            # batch's transaction, saved the pages it changes to a temporary file first,
            # several writes per flow. Only here: the CLI's listings may sort more than memory
            # should hold.
            db._db.execute("PRAGMA temp_store=MEMORY")
    except Exception as exc:
        pipe.send(exc)
        return
    try:
        answer_batches(
            pipe,
            lambda calls: [
                _pickled(outcome) for outcome in run_batch(db, [_loaded(c) for c in calls])
            ],
        )
    finally:
        db.close()


def _loaded(call: bytes) -> JournalCall:
    try:
        method: JournalCall = pickle.loads(call)  # noqa: S301 - from the daemon that started us
    except Exception as exc:
        return _Failing(exc)
    return method


class _Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, db: JournalDB) -> Any:
        raise self.exc


def _pickled(outcome: Any) -> bytes:
    try:
        return pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return pickle.dumps(TypeError(f"journal answer {outcome!r} cannot be sent back: {exc}"))


def run_batch(db: JournalDB, calls: list[JournalCall]) -> list[Any]:
    """Run a batch in one transaction; see the module docstring."""
    outcomes: list[Any] = []
    try:
        with db.transaction():
            answered = _coalesced(db, calls)
            for place, method in enumerate(calls):
                if place in answered:
                    outcomes.append(answered[place])
                    continue
                before = db.changes
                try:
                    outcomes.append(method(db))
                except JournalUnavailable:  # the database server went away: see below
                    raise
                except Exception as exc:
                    # On PostgreSQL a failed statement spoils the whole transaction: the
                    # others must run again, each alone, as after a call that wrote.
                    if db.changes != before or db.aborted:
                        raise _Dirty from exc
                    outcomes.append(exc)
    except _Dirty:
        return [_run_alone(db, method) for method in calls]
    except db.dialect.conflicts:  # the database ended it for another's sake: none applied
        return [_run_alone(db, method) for method in calls]
    except JournalUnavailable as exc:  # none applied, or unknown: the next batch reconnects
        return [exc] * len(calls)
    except db.dialect.errors as exc:  # the commit itself failed (disk full, I/O): none applied
        return [exc] * len(calls)
    return outcomes


def _coalesced(db: JournalDB, calls: list[JournalCall]) -> dict[int, Any]:
    """On PostgreSQL, the calls a bulk statement answered (:mod:`gateway.journal.bulk`)."""
    if not db.postgres:
        return {}
    try:
        return coalesce(db, calls)
    except JournalUnavailable:
        raise
    except Exception as exc:  # the transaction is spoilt: every call runs again, alone
        raise _Dirty from exc


#: How many times a call run alone is tried when the database ends it for a conflict.
CONFLICT_TRIES = 3


def _run_alone(db: JournalDB, method: JournalCall) -> Any:
    outcome: Any = None
    for _ in range(CONFLICT_TRIES):
        try:
            with db.transaction():
                return method(db)
        except db.dialect.conflicts as exc:  # nothing of it applied: again, after the other
            outcome = exc
        except Exception as exc:
            return exc
    return outcome


class _Dirty(Exception):
    """A call failed after writing: its batch must be undone and run again call by call."""
