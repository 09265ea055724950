"""Sign-in back-off: after a few failed sign-ins from one address or for one user name, the
next one waits, longer after each further failure.

A password guesser then gets a handful of tries, then one a minute, however many requests it
sends; the operator who mistyped waits a second or two. Two keys, because each misses an
attack the other sees: one address trying many names (the address), and many addresses
trying one name (the name). The name is counted whether or not such a user exists, so that
the answer says nothing about which users do.

An attempt counts as a failure from the moment it is let through until its password is found
good: a burst of simultaneous attempts is throttled like the same attempts one after the
other (the scrypt check runs off the event loop, so they would otherwise all be let in).
Memory is bounded: the table keeps the most recently seen keys only (an LRU), and a key quiet
for :data:`FORGET` seconds starts afresh.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["CAPACITY", "FIRST", "FORGET", "FREE", "LONGEST", "Throttle", "address_key"]

#: Failures let through before the first wait.
FREE = 5
#: The first wait, doubled at each further failure up to :data:`LONGEST` (seconds).
FIRST = 1.0
LONGEST = 60.0
#: A key with no failure for this long starts afresh (seconds).
FORGET = 15 * 60.0
#: Keys remembered at most (addresses and names together).
CAPACITY = 10_000


@dataclass
class _Record:
    failures: int = 0
    until: float = 0.0  # no attempt before this instant
    last: float = 0.0  # the last failure


def address_key(remote: str | None) -> str:
    """The key of a peer's address. An IPv6 address counts by its /64: one subscriber or host
    usually holds a whole /64, and would otherwise get fresh tries from each of its addresses."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return f"address:{remote}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"address:{address.ipv4_mapped}"
        return f"address:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"address:{address}"


class Throttle:
    """Failed sign-ins per key (``"address:…"``, ``"user:…"``), and the wait they impose."""

    def __init__(
        self,
        *,
        free: int = FREE,
        first: float = FIRST,
        longest: float = LONGEST,
        capacity: int = CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.first, self.longest = free, first, longest
        self.capacity = capacity
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def check(self, remote: str | None, user: str) -> tuple[tuple[str, str], int]:
        """A sign-in as ``user`` from the peer address ``remote``: its keys, and the whole
        seconds it must wait (0: let through, and counted as an attempt). The address is the
        TCP peer's, never X-Forwarded-For, which anyone can write; behind a reverse proxy
        every visitor shares the proxy's, and the count per name still holds."""
        keys = (address_key(remote), f"user:{user[:256]}")
        wait = self.wait(keys)
        if not wait:
            self.attempt(keys)
        return keys, wait

    def wait(self, keys: Sequence[str]) -> int:
        """Whole seconds before ``keys`` may try again (0: now)."""
        now = self.clock()
        left = max((self._get(key, now).until - now for key in keys), default=0.0)
        return math.ceil(left) if left > 0 else 0

    def attempt(self, keys: Sequence[str]) -> None:
        """An attempt is let through: it counts as a failure until :meth:`succeeded`."""
        now = self.clock()
        for key in keys:
            record = self._get(key, now)
            record.failures += 1
            record.last = now
            over = record.failures - self.free
            if over >= 0:
                record.until = now + min(self.longest, self.first * 2.0**over)
            self._records[key] = record
            self._records.move_to_end(key)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def succeeded(self, keys: Sequence[str]) -> None:
        """The password was good: these keys start afresh."""
        for key in keys:
            self._records.pop(key, None)

    def _get(self, key: str, now: float) -> _Record:
        record = self._records.get(key)
        if record is None or now - record.last > FORGET:
            return _Record()
        return record
