"""systemd's notification protocol (sd_notify), in the standard library: a datagram to the
socket named by ``NOTIFY_SOCKET``. Under ``Type=notify`` the daemon says READY once it watches
its folders, STATUS lines with its queue, STOPPING on its way out, and — when the unit sets
``WatchdogSec`` — a WATCHDOG keep-alive from its event loop, so that a stuck loop is restarted.
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

#: Keep-alives per watchdog period (systemd advises at least two).
BEATS_PER_PERIOD = 2


def notify(message: str) -> None:
    """Tell systemd ``message`` (``READY=1``, ``STATUS=…``, ``WATCHDOG=1``) if it listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode(), address)


def watchdog_period() -> float | None:
    """The watchdog period systemd asks of this process, in seconds; None if none."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we are a child)
    try:
        microseconds = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return microseconds / 1e6 if microseconds > 0 else None


async def keep_alive(stopping: asyncio.Event) -> None:
    """Send WATCHDOG=1 from the event loop while it runs, until ``stopping`` is set: if the loop
    stalls, the keep-alives stop and systemd kills and restarts the service."""
    period = watchdog_period()
    if period is None:
        return
    while not stopping.is_set():
        notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period / BEATS_PER_PERIOD)
