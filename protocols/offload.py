"""A sender's transfers in a process of their own.

A protocol whose library costs much CPU per file can hand its sends to a worker process: a copy
of its sender, built there from the same (picklable) settings, runs each ``send`` and answers
with the receipt or the :class:`~protocols.errors.TransferError`. The daemon's event loop then
only forwards requests. asyncssh (packets, AES-GCM, and a wait for the GIL each time it
released it for a system call) took a large share of the loop thread's time; in their own
process the sends leave the loop thread to the daemon, and the daemon's threads no longer
fight over the GIL (docs/performance.md, "What was measured").

The two processes speak over a socket pair, with length-prefixed pickles, on both sides from
the event loop (no thread): the daemon sends ``("send", id, Outbound)``, ``("cancel", id)``,
or ``("prepare",)`` (a flow is coming: a sender with a ``prepare()`` method opens its
connection now); the worker answers ``(id, True, Receipt)`` or ``(id, False, exception)``, and
id 0 says it is ready (or why it is not). The messages of one loop turn go in one write. While
transfers are under way the daemon also sends ``("ping",)`` whenever the worker has been silent
for a third of ``patience``; the worker answers ``(-1, True, None)`` from its event loop. A
worker silent for ``patience`` with transfers under way (stopped, or stuck outside Python) is
killed, which fails them as below: its own timeouts bound each transfer, nothing bounds a
frozen process.

A worker that ends with transfers under way (killed, crashed, out of memory) fails each of
them with :class:`~protocols.errors.SenderDied`, which is retryable: whether the partner got
the file is unknown, and the dispatcher resends under the same remote name, which the sender
checks first. The next send starts a new worker. The worker ignores SIGTERM and SIGINT (a stop
signals the whole process group or control group, and the daemon still needs its transfers to
finish); it ends when the daemon closes the socket, or dies: a worker never outlives its daemon.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from protocols.base import Outbound, Receipt, Sender
from protocols.coalescing import CoalescingTransport
from protocols.errors import SenderDied

S = TypeVar("S")

#: Seconds a new worker gets to say it is ready.
START_PATIENCE = 60.0

#: Seconds a worker with transfers under way may stay silent (no answer, not even to a ping)
#: before it is taken for frozen and killed.
PATIENCE = 60.0

#: Seconds a closing worker gets to end its sessions and exit before it is killed.
STOP_PATIENCE = 10.0

_HEADER = 4  # bytes of a frame's length, big-endian


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_HEADER, "big") + data


class _Link(asyncio.Protocol):
    """Frames in and out of one end of the socket pair; a turn's frames leave in one write
    (:class:`~protocols.coalescing.CoalescingTransport`)."""

    def __init__(self) -> None:
        self.transport: CoalescingTransport | None = None
        self.closed = False
        self.heard = time.monotonic()  # when the other end last sent something
        self._received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = CoalescingTransport(transport)

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        buffer = self._received
        buffer += data
        start = 0
        while len(buffer) - start >= _HEADER:
            end = start + _HEADER + int.from_bytes(buffer[start : start + _HEADER], "big")
            if end > len(buffer):
                break
            self.on_message(pickle.loads(buffer[start + _HEADER : end]))  # noqa: S301 - our pair
            start = end
        del buffer[:start]

    def on_message(self, message: Any) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def post(self, message: Any) -> None:
        """Send ``message`` with the others of this loop turn (dropped once closed)."""
        if self.transport is not None and not self.closed:
            self.transport.write(_frame(message))


class _Requests(_Link):
    """The daemon's end: a future per request under way."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exit_code: Callable[[], int | None] = lambda: None
        self.verdict = "ended"  # or why the daemon ended it
        self.pending: dict[int, asyncio.Future[Receipt]] = {}
        self._last = 0

    def on_message(self, message: Any) -> None:
        key, ok, value = message
        if key == -1:
            return  # an answer to a ping: heard
        future = self.ready if key == 0 else self.pending.pop(key, None)
        if future is None or future.done():
            return  # answer to a cancelled request
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        code = self.exit_code()
        ended = f"the sending process ({self.name}) {self.verdict}" + (
            f" (exit code {code})" if code is not None else ""
        )
        if not self.ready.done():
            self.ready.set_exception(SenderDied(f"{ended} as it started"))
        for future in self.pending.values():
            if not future.done():
                future.set_exception(
                    SenderDied(
                        f"{ended} with this transfer under way; whether the partner got the "
                        "file is unknown: it is sent again under the same name, the partner "
                        "checked first"
                    )
                )
        self.pending.clear()

    async def request(self, flow: Outbound) -> Receipt:
        if self.closed:
            raise SenderDied(f"the sending process ({self.name}) has ended")
        self._last += 1
        key = self._last
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        self.post(("send", key, flow))
        try:
            return await future
        except asyncio.CancelledError:
            if self.pending.pop(key, None) is not None:
                self.post(("cancel", key))  # the worker cancels the transfer
            raise


class _Answers(_Link):
    """The worker's end: a task per request, each answered when it ends."""

    def __init__(self, sender: Sender | None) -> None:
        super().__init__()
        self.sender = sender
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def on_message(self, message: Any) -> None:
        verb = message[0]
        if verb == "send":
            _, key, flow = message
            self.tasks[key] = asyncio.get_running_loop().create_task(self._answer(key, flow))
        elif verb == "cancel":
            task = self.tasks.get(message[1])
            if task is not None:
                task.cancel()
        elif verb == "ping":
            self.post((-1, True, None))
        elif verb == "prepare":
            prepare = getattr(self.sender, "prepare", None)
            if prepare is not None:
                prepare()

    async def _answer(self, key: int, flow: Outbound) -> None:
        assert self.sender is not None  # no requests come before the ready answer
        try:
            answer: tuple[int, bool, Any] = (key, True, await self.sender.send(flow))
        except Exception as exc:
            answer = (key, False, exc)
        finally:
            del self.tasks[key]
        try:
            self.post(answer)
        except Exception as exc:  # a result that cannot be pickled: a bug of the sender
            self.post((key, False, RuntimeError(f"the sender's answer cannot be passed: {exc!r}")))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.gone.done():
            self.gone.set_result(None)


class SendingProcess(Generic[S]):
    """Runs ``create(settings).send`` in a worker process, started on the first send (and again
    after it ended). ``create`` and ``settings`` must pickle: ``create`` is a module-level
    function or class, ``settings`` plain data."""

    def __init__(
        self,
        create: Callable[[S], Sender],
        settings: S,
        name: str,
        *,
        patience: float = PATIENCE,
    ) -> None:
        self._create = create
        self._settings = settings
        self.name = name
        self.patience = patience
        self._process: Any = None
        self._link: _Requests | None = None
        self._watch: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The worker's process id while one runs (for tests and diagnostics)."""
        return None if self._process is None else int(self._process.pid)

    async def start(self) -> None:
        """Start the worker now rather than with the first send (idempotent).

        Raises:
            SenderDied: it could not start (the reason is in the message).
        """
        if self._link is None or self._link.closed:
            await self._started()

    def prepare(self) -> None:
        """Tell a running worker that a flow is coming (see :class:`protocols.base.Prepares`);
        nothing if none runs (the first send starts one)."""
        link = self._link
        if link is not None and not link.closed:
            link.post(("prepare",))

    async def send(self, flow: Outbound) -> Receipt:
        """``flow`` sent by the worker.

        Raises:
            protocols.errors.TransferError: the worker's sender raised it; or SenderDied, the
                worker ended with this transfer under way (outcome unknown).
        """
        link = self._link
        if link is None or link.closed:
            link = await self._started()
        return await link.request(flow)

    async def _started(self) -> _Requests:
        async with self._starting:
            if self._link is not None and not self._link.closed:
                return self._link
            await self._stop()
            loop = asyncio.get_running_loop()
            ours, theirs = socket.socketpair()
            process = multiprocessing.get_context("forkserver").Process(
                target=_serve,
                args=(self._create, self._settings, theirs),
                name=self.name,
                daemon=True,
            )
            try:
                await asyncio.to_thread(process.start)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self._process = process
            link = _Requests(self.name)
            link.exit_code = lambda: process.exitcode
            await loop.create_unix_connection(lambda: link, sock=ours)
            self._link = link
            self._watch = loop.create_task(self._watching(link, process), name="offload-watch")
            try:
                await asyncio.wait_for(asyncio.shield(link.ready), START_PATIENCE)
            except BaseException:
                await self._stop()
                raise
            return link

    async def aclose(self) -> None:
        """End the worker (its sessions closed); the next send starts another."""
        async with self._starting:
            await self._stop()

    async def _watching(self, link: _Requests, process: Any) -> None:
        """Ping a silent worker that has transfers under way; kill it if it stays silent."""
        while not link.closed:
            await asyncio.sleep(self.patience / 6)
            silent = time.monotonic() - link.heard
            if not link.pending or silent < self.patience / 3:
                continue
            if silent < self.patience:
                link.post(("ping",))
                continue
            link.verdict = f"stopped answering for {silent:.0f} s and was killed"
            process.kill()  # the socket closes: connection_lost fails what it had
            return

    async def _stop(self) -> None:
        link, process, watch = self._link, self._process, self._watch
        self._link = self._process = self._watch = None
        if watch is not None:
            watch.cancel()
        if link is not None and link.transport is not None:
            link.transport.close()  # the worker reads end-of-file, closes its sender, exits
        if process is not None:
            await asyncio.to_thread(_join, process)


def _join(process: Any) -> None:
    process.join(STOP_PATIENCE)
    if process.is_alive():
        process.kill()
        process.join()


def _serve(create: Callable[[Any], Sender], settings: Any, sock: socket.socket) -> None:
    """The worker process: answer sends until the daemon closes the socket or is gone."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    # The worker reports through its answers; the daemon alone writes the (JSON) log, so the
    # libraries' own log records must not reach the daemon's stderr as plain text.
    logging.getLogger().addHandler(logging.NullHandler())
    asyncio.run(_answer_sends(create, settings, sock))


async def _answer_sends(
    create: Callable[[Any], Sender], settings: Any, sock: socket.socket
) -> None:
    try:
        sender, failure = create(settings), None
    except Exception as exc:
        sender, failure = None, exc
    link = _Answers(sender)
    await asyncio.get_running_loop().create_unix_connection(lambda: link, sock=sock)
    if sender is None:
        link.post((0, False, SenderDied(f"the sending process could not start: {failure!r}")))
        assert link.transport is not None
        link.transport.close()  # after what was posted
        await asyncio.sleep(0)  # the socket's own transport writes its buffer, then closes
        return
    async with sender:
        link.post((0, True, None))
        await link.gone
        for task in list(link.tasks.values()):
            task.cancel()
        if link.tasks:
            await asyncio.wait(list(link.tasks.values()))
