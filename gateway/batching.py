"""Group work that arrives in bursts, so costly steps (a commit, an fsync) are paid per batch.

A :class:`Batcher` runs a blocking function over a *list* of items on a worker thread. While one
batch runs, new items wait; when it returns, all waiting items go together in the next call.
A lone item therefore goes through at once (no timer, no added latency), and under a burst of
thousands the fixed cost is shared by hundreds. Each caller gets its own item's result or
exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import multiprocessing
import os
import select
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from gateway import logs

log = logs.get()

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Feeds items to ``work`` (blocking, called off the event loop) in batches."""

    def __init__(
        self,
        work: Callable[[list[T]], Sequence[R | Exception]],
        *,
        executor: Executor | None = None,
        max_batch: int = 512,
    ) -> None:
        self._work = work
        self._executor = executor
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Run ``item`` in the next batch; return its result or raise its exception."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="batcher")
        return await future

    async def idle(self) -> None:
        """Wait until every submitted item has been run."""
        while self._drainer is not None:
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                items = [item for item, _ in batch]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._work, items)
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} items")
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._drainer = None
            for _, future in batch + self._pending:  # unresolved only if this task was cancelled
                if not future.done():
                    future.cancel()
            self._pending.clear()


class WorkerDied(RuntimeError):
    """The worker process ended while it held a batch; whether it finished it is unknown."""


class WorkerProcess:
    """A child process that runs batches sent over a pipe, one at a time (blocking calls: use
    them from a worker thread).

    ``target(*args, pipe)`` runs in the child: it sets itself up, then calls
    :func:`answer_batches` (or sends the exception that stopped it). The daemon alone holds the
    other end of the pipe, so a child whose daemon dies (even by kill -9) reads end-of-file and
    exits: no process is left behind. For the same reason the child ignores SIGTERM and SIGINT:
    systemd's stop signals the unit's whole control group, and Ctrl-C the terminal's process
    group, while the daemon still needs its workers to finish the transfers under way; it ends
    them itself when it is done.
    """

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self._target = target
        self._args = args
        self._process: Any = None
        self._pipe: Any = None
        self._life: Any = None  # the daemon's end of the child's life line (see _child)

    @property
    def pid(self) -> int | None:
        """The child's process id, None when it is not running."""
        return None if self._process is None else int(self._process.pid)

    def start(self) -> None:
        """Start the child and wait for its first message; re-raise the error it sent."""
        ours, theirs = worker_context().Pipe()
        life_child, life = worker_context().Pipe(duplex=False)
        process = worker_context().Process(
            target=_child,
            args=(life_child, self._target, *self._args, theirs),
            name=self.name,
            daemon=True,
        )
        process.start()
        theirs.close()
        life_child.close()
        try:
            ready = ours.recv()
        except (EOFError, OSError):
            process.join(5)
            ours.close()
            life.close()
            raise WorkerDied(f"{self.name} exited with {process.exitcode} as it started") from None
        if isinstance(ready, BaseException):
            process.join(5)
            ours.close()
            life.close()
            raise ready
        self._process, self._pipe, self._life = process, ours, life

    def run(self, batch: Any) -> Any:
        """Send ``batch`` (starting the child first if it is not running) and return its answer.

        Raises:
            WorkerDied: the child ended before answering (it is started again next time).
        """
        # Between batches a live child sends nothing: a readable pipe means it is gone. (Not
        # Process.is_alive(): that asks the fork server, which a stop signal may have ended
        # while the child itself lives on.)
        if self._pipe is not None and self._pipe.poll():
            self._died("between batches")
        if self._pipe is None:
            self.start()
        try:
            self._pipe.send(batch)
            return self._pipe.recv()
        except (EOFError, OSError):
            code = self._died("with a batch")
            raise WorkerDied(f"{self.name} ended (exit code {code})") from None

    def _died(self, when: str) -> int | None:
        code = self._process.exitcode if self._process is not None else None
        log.warning("worker.died", worker=self.name, exit_code=code, when=when)
        self.stop()
        return code

    def stop(self) -> None:
        """Ask the child to end; kill it if it has not within 10 s."""
        process, pipe, life = self._process, self._pipe, self._life
        self._process = self._pipe = self._life = None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.send(None)
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        if pipe is not None:
            pipe.close()
        if life is not None:  # after the join: closing it ends the child (see _child)
            life.close()

    def kill(self) -> None:
        """End the child now, whatever it is doing (it may be stuck: nothing is asked of it)."""
        process, pipe, life = self._process, self._pipe, self._life
        self._process = self._pipe = self._life = None
        if process is not None:
            process.kill()
            process.join(5)
        for end in (pipe, life):
            if end is not None:
                end.close()


def _child(life: Any, target: Callable[..., None], *args: Any) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    end_with_the_daemon(life)
    target(*args)


def end_with_the_daemon(life: Any) -> None:
    """Have the kernel end this process as soon as the daemon's end of ``life`` (a pipe the
    daemon never writes to, and holds alone) is closed: when the daemon ends, by kill -9 too.

    A worker notices its daemon's death by reading end-of-file on its pipe, but only between
    two batches: one busy in a runaway parse (which holds its interpreter: no thread of its own
    could act) or blocked in a system call would outlive the daemon, and keep the fork server
    and its resource tracker alive with it (each lives while one of its children does). So the
    life line is in asynchronous mode, owned by this process: when its last writer closes, the
    kernel sends SIGIO, whose default action ends the process at once and silently (no Python
    code runs: no traceback of a broken pipe on the daemon's output).
    """
    fd = life.fileno()
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    if select.select([fd], [], [], 0)[0]:  # the daemon died before the line was set up
        os._exit(0)


class WorkerBatches(Generic[T, R]):
    """Items run ``work`` in batches in a worker process of their own: one round trip per batch,
    and the work competes neither with the event loop nor with the daemon's threads for the GIL.

    ``work`` is a module-level function (sent to the worker by name) from a list of items to
    one result or exception per item. :meth:`run` is what a batch does on the daemon's side;
    subclasses override it to decide what the worker's death means for the batch.
    """

    def __init__(
        self, name: str, work: Callable[[list[T]], Sequence[R | Exception]], *, max_batch: int
    ) -> None:
        self.worker = WorkerProcess(name, serve_batches, work)
        self._batcher: Batcher[T, R] = Batcher(self.run, max_batch=max_batch)

    async def open(self) -> None:
        """Start the worker now rather than with the first item (a start is slow: as any
        multiprocessing child it imports the daemon's main module)."""
        await asyncio.to_thread(self.worker.start)

    async def submit(self, item: T) -> R:
        """``item``'s result from the worker; raises its exception."""
        return await self._batcher.submit(item)

    def run(self, items: list[T]) -> Sequence[R | Exception]:
        """One batch, on a Batcher thread.

        Raises:
            WorkerDied: the worker ended before answering.
        """
        answer: Sequence[R | Exception] = self.worker.run(items)
        return answer

    async def close(self) -> None:
        """End the worker once every submitted item has run (a later item starts it again)."""
        await self._batcher.idle()
        await asyncio.to_thread(self.worker.stop)


def serve_batches(work: Callable[[list[Any]], Any], pipe: Any) -> None:
    """A :class:`WorkerBatches` process: answer each batch with ``work(batch)``."""
    answer_batches(pipe, work)


def answer_batches(pipe: Any, handle: Callable[[Any], Any]) -> None:
    """In a worker process: say it is ready, then answer each batch from ``pipe`` with
    ``handle(batch)`` until the daemon sends None or is gone."""
    pipe.send(True)
    while True:
        try:
            batch = pipe.recv()
        except (EOFError, OSError):
            return  # the daemon is gone
        if batch is None:
            return
        try:
            pipe.send(handle(batch))
        except OSError:
            return


@functools.cache
def worker_context() -> multiprocessing.context.ForkServerContext:
    """How the daemon starts its worker processes (journal, analysis, filing, and the SFTP
    uploads: :mod:`protocols.offload` uses the same fork server).

    Not fork: the daemon has threads, which a forked child would inherit half-way. A fork server
    is one clean process, started once with the workers' code loaded; each worker (again after
    a crash) is forked from it in milliseconds.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["gateway.flow.analyser", "gateway.flow.filer", "gateway.journal"]
    )
    return context
