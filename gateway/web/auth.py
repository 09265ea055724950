"""Who may see and do what: password hashes, sessions and CSRF tokens.

Passwords are hashed with scrypt from the standard library (memory-hard, so a stolen
configuration is slow to brute-force); the hash is one string for the configuration::

    scrypt$16384$8$1$<salt, base64>$<key, base64>

Sessions live in the daemon's memory (a restart signs everyone out): the cookie holds a random
token only. Every visitor gets a session (signed in or not) whose CSRF token every POST form
carries; signing in replaces the session, so a token planted before sign-in is worth nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

#: scrypt's cost: 2**14 x 8 x 128 bytes = 16 MB and some 50 ms a check on a laptop.
N, R, P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024
#: A session not used for this long is forgotten (seconds).
IDLE = 8 * 3600.0
#: At most this many sessions are kept (the oldest go first), so that anonymous visits cannot
#: grow the daemon's memory without bound.
MAX_SESSIONS = 10_000


class HashError(ValueError):
    """A password hash that is not one ``raccord web-passwd`` makes."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=_MAXMEM, dklen=32)
    return "$".join(("scrypt", str(N), str(R), str(P), base64.b64encode(salt).decode(), _b64(key)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """The parameters of a hash.

    Raises:
        HashError: not a hash this module makes (the message says what is wrong, never it).
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise HashError('not a password hash ("scrypt$…")')
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = (
            base64.b64decode(parts[4], validate=True),
            base64.b64decode(parts[5], validate=True),
        )
    except ValueError:
        raise HashError("a damaged password hash") from None
    if n < 2**10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or len(key) < 16:
        raise HashError("a password hash with unusable parameters")
    if 128 * n * r > _MAXMEM:
        raise HashError("a password hash too costly to check")
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (constant time in the key's comparison)."""
    try:
        n, r, p, salt, key = check_hash(encoded)
    except HashError:
        return False
    tried = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(key)
    )
    return hmac.compare_digest(tried, key)


@functools.cache
def dummy_hash() -> str:
    """A hash nobody's password matches, checked when the user name is unknown, so that the
    answer takes as long as for a known user with a wrong password (made on first use: a
    hash costs tens of milliseconds, which no other command should pay)."""
    return hash_password(secrets.token_hex(16))


@dataclass
class Session:
    token: str
    csrf: str
    user: str | None = None
    used: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.used > IDLE:
            del self._sessions[token]
            return None
        session.used = now
        return session

    def new(self, user: str | None = None) -> Session:
        while len(self._sessions) >= MAX_SESSIONS:  # anonymous visits go first
            oldest = min(self._sessions.values(), key=lambda s: (s.user is not None, s.used))
            del self._sessions[oldest.token]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user)
        self._sessions[session.token] = session
        return session

    def end(self, session: Session) -> None:
        self._sessions.pop(session.token, None)

    def end_users(self, users: set[str]) -> int:
        """Sign ``users`` out everywhere (removed, or their password changed); how many."""
        ended = [s for s in self._sessions.values() if s.user in users]
        for session in ended:
            del self._sessions[session.token]
        return len(ended)


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
