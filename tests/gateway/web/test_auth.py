"""Password hashes and sessions: a hash checks its own password only, a damaged or hostile
hash in the configuration is refused with a sentence (never a crash, never a huge scrypt), and
sessions forget idle and excess visitors before signed-in users."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.web import auth


def test_a_hash_checks_its_password_and_no_other() -> None:
    encoded = auth.hash_password("correct horse")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert auth.verify_password("correct horse", encoded)
    assert not auth.verify_password("correct horsf", encoded)
    assert not auth.verify_password("", encoded)
    assert auth.hash_password("correct horse") != encoded  # salted


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-password",
        "scrypt$16384$8$1$c2FsdA==",
        "scrypt$16384$8$1$!!!$AAAA",
        "scrypt$1000$8$1$c2FsdA==$" + "A" * 44,  # n not a power of two
        "scrypt$1048576$64$1$c2FsdA==$" + "A" * 44,  # gigabytes of memory per check
        "pbkdf2$1$2$3$4$5",
    ],
)
def test_a_damaged_or_hostile_hash_is_refused(encoded: str) -> None:
    with pytest.raises(auth.HashError):
        auth.check_hash(encoded)
    assert not auth.verify_password("anything", encoded)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_as_a_hash_is_refused_or_checked_never_a_crash(encoded: str) -> None:
    with contextlib.suppress(auth.HashError):  # anything else would be a crash
        auth.check_hash(encoded)
    assert auth.verify_password("x", encoded) in (True, False)


def test_sessions_keep_signed_in_users_over_anonymous_visits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "MAX_SESSIONS", 3)
    sessions = auth.Sessions()
    alice = sessions.new("alice")
    for _ in range(10):
        sessions.new()
    assert sessions.get(alice.token) is alice
    assert sessions.get("forged") is None and sessions.get(None) is None
    sessions.end(alice)
    assert sessions.get(alice.token) is None


def test_an_idle_session_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = auth.Sessions()
    session = sessions.new("alice")
    session.used -= auth.IDLE + 1
    assert sessions.get(session.token) is None


def test_tokens_compare_exactly() -> None:
    assert auth.same_token("abc", "abc")
    assert not auth.same_token("abd", "abc")
    assert not auth.same_token(None, "abc")
    assert not auth.same_token("", "abc")
