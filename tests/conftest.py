"""Shared fixtures: sample invoices and small builders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest

from gateway import logs
from gateway.sandbox import pki
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair
from tests.postgres import postgres_server as postgres_server  # a real PostgreSQL, any package
from tests.postgres import postgres_url as postgres_url

FIXTURES = Path(__file__).parent / "fixtures"

Write = Callable[[str, bytes], Path]
"""The type of the ``write`` fixture, for tests that take it."""


def sample(name: str) -> bytes:
    """A sample shipped with raccord (gateway/sandbox/samples), as bytes."""
    return (resources.files("gateway.sandbox") / "samples" / name).read_bytes()


@pytest.fixture(autouse=True)
def _logs_where_the_daemon_writes_them() -> Iterator[None]:
    """After each test, the logs go to stdout again: a command that moved them (``analyze``
    sends them to stderr, a gateway may start a background writer) must not change what a
    later test captures."""
    yield
    logs.configure()


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """write(name, data) -> Path: a file in a fresh folder."""

    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


@pytest.fixture(scope="session")
def our_keys() -> KeyPair:
    """Our AS2 key and self-signed certificate (MYCOMPANY)."""
    return pki.issue("MYCOMPANY AS2")


@pytest.fixture(scope="session")
def partner_keys() -> KeyPair:
    """The AS2 partner's key and self-signed certificate (CTAIFEP)."""
    return pki.issue("CTAIFEP AS2")


@pytest.fixture
def as2_settings(our_keys: KeyPair, partner_keys: KeyPair) -> As2Settings:
    """Our side of the connection, as [connection.as2] would give it (files not needed)."""
    return As2Settings(
        url="http://127.0.0.1:1/",
        as2_from="MYCOMPANY",
        as2_to="CTAIFEP",
        keys=our_keys,
        partner_chain=(partner_keys.certificate,),
        partner_trust=(),
        key_path=Path("our.key"),
        partner_certificate_path=Path("partner.crt"),
        message_id_domain="raccord.test",
    )
