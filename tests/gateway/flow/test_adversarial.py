"""The project's own adversarial suite: Hypothesis drops generated hostile entries (names of any
bytes and length, every kind of entry, XML of every shape) into a real gateway's outbox, through
its real intake, and checks the promises that hold whatever is dropped:

* every entry ops could mean to send (a name intake does not reserve for files being written)
  ends in exactly one of sent/ or error/, with a stated reason, never internal_error;
* what a link points to is never read, moved or sent;
* a regular file is filed with its bytes unchanged; the journal keeps its original name.

Bounded in time: a handful of examples, each one gateway run; no deadline per example (a
gateway start is not a unit of work Hypothesis should time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.folders import Layout, is_candidate
from gateway.journal import FlowRow
from protocols.testing import memory
from tests.conftest import sample
from tests.gateway.harness import filed, memory_config, rows, running, until

pytestmark = pytest.mark.timeout(600)

BOUNDED = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)

#: Reasons a hostile entry may be filed under: each says what is wrong with the entry itself.
ENTRY_REASONS = {
    None,  # sent
    "not_a_regular_file",
    "malformed_xml",
    "unknown_format",
    "empty",
    "no_interface_code",
    "not_connected",
    "duplicate",
    "too_large",
    "analysis_timeout",
}


@dataclass(frozen=True)
class Entry:
    name: bytes
    kind: str  # file, link, dangling, fifo, socket, folder
    data: bytes = b""


def _valid_name(name: bytes) -> bool:
    return (
        b"/" not in name
        and b"\0" not in name
        and name not in (b".", b"..")
        and is_candidate(os.fsdecode(name))
    )


names = st.one_of(
    st.binary(min_size=1, max_size=255),
    st.text(min_size=1, max_size=120).map(lambda t: t.encode("utf-8")[:255]),
    st.integers(200, 255).map(lambda n: b"-" + b"x" * (n - 1)),  # long, leading dash
    st.sampled_from([b"-rf", b"--help", b"a\nb.xml", b"\xff\xfe.xml", b" .xml", b"*.xml"]),
).filter(_valid_name)

UBL = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"


def _attributes(count: int) -> bytes:
    return b" ".join(b'a%d="v"' % i for i in range(count))


xml_shapes = st.one_of(
    st.text(max_size=12).map(
        lambda n: sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", b"ADV-" + n.encode())
    ),
    st.integers(0, 4000).map(
        lambda n: f"<Invoice xmlns='{UBL}' ".encode() + _attributes(n) + b"/>"
    ),
    st.integers(1, 3000).map(lambda d: b"<a>" * d + b"x" + b"</a>" * d),
    st.integers(0, 400_000).map(
        lambda n: f"<Invoice xmlns='{UBL}'><t>".encode() + b"A" * n + b"</t></Invoice>"
    ),
    st.just(
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    ),
    st.sampled_from(["utf-16", "utf-8-sig", "latin-1"]).map(
        lambda enc: (
            f'<?xml version="1.0" encoding="{enc.replace("-sig", "")}"?>'
            f"<Invoice xmlns='{UBL}'><ID>é</ID></Invoice>"
        ).encode(enc)
    ),
    st.binary(max_size=2000),
)

kinds = st.sampled_from(["file", "file", "file", "link", "dangling", "fifo", "socket", "folder"])

entries = st.lists(
    st.builds(Entry, name=names, kind=kinds, data=xml_shapes),
    min_size=1,
    max_size=8,
    # Unique as the journal shows them: bytes that are not UTF-8 are shown as U+FFFD.
    unique_by=lambda e: _shown(e.name),
)


def _shown(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def _make(entry: Entry, where: Path, secret: Path) -> None:
    path = os.path.join(os.fsencode(where), entry.name)
    if entry.kind == "file":
        with open(path, "wb") as out:
            out.write(entry.data)
    elif entry.kind == "link":
        os.symlink(os.fsencode(secret), path)
    elif entry.kind == "dangling":
        os.symlink(b"/nonexistent/raccord-test", path)
    elif entry.kind == "fifo":
        os.mkfifo(path)
    elif entry.kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            # A socket's path is limited to 108 bytes: bound short, then renamed.
            short = os.path.join(os.fsencode(where), b".s")
            sock.bind(short)
            os.rename(short, path)
    else:
        os.mkdir(path)


def _drop_all(batch: list[Entry], tmp: Path) -> dict[str, FlowRow]:
    """Run a gateway, drop every entry (made beside, renamed in), wait until all are filed;
    return the rows by original name and the secret's state."""
    bucket = f"adversarial-{os.getpid()}-{id(batch)}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp, bucket)
    secret = tmp / "outside" / "secret.xml"
    secret.parent.mkdir()
    secret_bytes = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", b"SECRET")
    secret.write_bytes(secret_bytes)
    staging = tmp / "staging"
    staging.mkdir()
    outbox = Layout(config.gateway.data_dir).outbox(config.connections[0].name)

    async def main() -> None:
        async with running(config):
            for entry in batch:
                _make(entry, staging, secret)
                os.rename(
                    os.path.join(os.fsencode(staging), entry.name),
                    os.path.join(os.fsencode(outbox), entry.name),
                )
            await until(filed(config, len(batch)), timeout=120, what="every entry filed")

    asyncio.run(main())
    assert secret.read_bytes() == secret_bytes, "what a link points to was touched"
    sent = memory.bucket(bucket).files.values()
    assert b"SECRET" not in b"".join(sent), "what a link points to was sent"
    assert not os.listdir(outbox), "an entry stayed in the outbox"
    return {row.original_name: row for row in rows(config)}


@BOUNDED
@given(batch=entries)
def test_every_hostile_entry_ends_in_sent_or_error_with_its_reason(batch: list[Entry]) -> None:
    with tempfile.TemporaryDirectory(prefix="raccord-adv-") as folder:
        by_name = _drop_all(batch, Path(folder))
        assert len(by_name) == len(batch)
        for entry in batch:
            original = (
                os.fsdecode(entry.name)
                .encode("utf-8", "surrogateescape")
                .decode("utf-8", "replace")
            )
            row = by_name[original]
            assert row.state in ("sent", "error"), (entry, row)
            assert row.reason in ENTRY_REASONS, (entry.kind, row.reason, row.message)
            final = Path(row.final_path or "")
            assert os.path.lexists(final), row
            if entry.kind == "file":
                assert final.read_bytes() == entry.data
            else:
                assert row.reason == "not_a_regular_file", (entry.kind, row.reason)
                with contextlib.suppress(OSError):
                    assert not final.is_file() or final.is_symlink()
