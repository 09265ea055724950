"""Hostile outboxes, through the real intake of a running gateway: only regular files are read,
nothing an adversary drops stalls the daemon, every entry ends in sent/ or error/ with a reason,
entries in the wrong place are reported."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.daemon import Gateway
from gateway.flow import dispatcher as dispatcher_module
from gateway.flow.analyser import Analyser
from gateway.flow.filer import Filer
from gateway.folders import Layout, Placement
from gateway.journal import Journal, JournalDB
from protocols.testing import memory
from tests.conftest import sample
from tests.e2e.sshd import free_port
from tests.gateway.harness import deliver, drop, filed, memory_config, rows, running, sidecar, until

pytestmark = pytest.mark.timeout(120)

_buckets = iter(range(10**6))


@pytest.fixture
def bucket() -> str:
    name = f"hostile-{next(_buckets)}"
    memory.BUCKETS.pop(name, None)
    return name


def invoice(number: str) -> bytes:
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())


def outbox(config: Config) -> Path:
    path = Layout(config.gateway.data_dir).outbox(config.connections[0].name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def non_regular_entries(folder: Path, outside: Path) -> dict[str, Path]:
    """One entry of each kind that is not a regular file, created in ``folder``."""
    entries = {
        "link-outside.xml": lambda p: p.symlink_to(outside),
        "link-dangling.xml": lambda p: p.symlink_to(folder / "nowhere.xml"),
        "link-device.xml": lambda p: p.symlink_to("/dev/zero"),
        "link-folder": lambda p: p.symlink_to(outside.parent),
        "fifo.xml": lambda p: os.mkfifo(p),
        "socket.xml": _bind_socket,
        "folder": _folder_with_a_file,
    }
    made = {}
    for name, make in entries.items():
        make(folder / name)
        made[name] = folder / name
    return made


def _bind_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _folder_with_a_file(path: Path) -> None:
    path.mkdir()
    (path / "inside.xml").write_bytes(invoice("F-inside"))


@pytest.mark.parametrize("arrival", ["created in place", "renamed in", "there at start"])
def test_only_regular_files_are_read_and_every_other_entry_is_filed_as_itself(
    tmp_path: Path, bucket: str, arrival: str
) -> None:
    """A link is never followed (an invoice outside data_dir is never sent, a secret never
    read), a FIFO never blocks, and each non-regular entry is moved, itself, to error/ with
    reason not_a_regular_file; a real invoice dropped after them is sent."""
    config = memory_config(tmp_path, bucket)
    secret = tmp_path / "outside" / "invoice.xml"
    secret.parent.mkdir()
    secret.write_bytes(invoice("F-outside"))
    box = outbox(config)
    staging = tmp_path / "staging"
    staging.mkdir()

    def make() -> dict[str, Path]:
        if arrival == "created in place":
            return non_regular_entries(box, secret)
        made = non_regular_entries(staging, secret)
        for name, path in made.items():
            path.rename(box / name)
        return {name: box / name for name in made}

    async def main() -> None:
        made = make() if arrival == "there at start" else {}
        async with running(config):
            if not made:
                made = make()
            await until(filed(config, len(made)), timeout=30, what="every entry filed")
            drop(config, "real.xml", invoice("F-real"))
            await until(filed(config, len(made) + 1), timeout=30, what="the real invoice")

    asyncio.run(main())
    by_name = {row.original_name: row for row in rows(config)}
    assert by_name.pop("real.xml").state == "sent"
    assert set(by_name) == {
        "link-outside.xml",
        "link-dangling.xml",
        "link-device.xml",
        "link-folder",
        "fifo.xml",
        "socket.xml",
        "folder",
    }
    for name, row in by_name.items():
        assert (row.state, row.reason) == ("error", "not_a_regular_file"), name
        assert "not a regular file" in (row.message or "")
        assert sidecar(row, ".error.json")["reason"] == "not_a_regular_file"
        final = Path(row.final_path or "")
        assert final.parent == Layout(config.gateway.data_dir).error(config.connections[0].name)
        assert os.path.lexists(final)
    error = Layout(config.gateway.data_dir).error(config.connections[0].name)
    assert (error / "link-outside.xml").is_symlink()  # the link itself, not a copy of its target
    assert os.readlink(error / "link-outside.xml") == str(secret)
    assert (error / "folder" / "inside.xml").exists()
    assert secret.read_bytes() == invoice("F-outside")  # untouched, never moved
    assert list(memory.bucket(bucket).files.values()) == [invoice("F-real")]
    assert not list(outbox(config).iterdir())


def test_a_legitimate_invoice_with_a_huge_attachment_is_sent(tmp_path: Path, bucket: str) -> None:
    """One base64 text node over libxml2's 10 MB default (a PDF attached to a UBL invoice),
    well under max_file_size: analysed and sent, not refused as malformed_xml."""
    config = memory_config(tmp_path, bucket)
    attachment = (
        b"<cac:AdditionalDocumentReference><cbc:ID>pdf</cbc:ID><cac:Attachment>"
        b'<cbc:EmbeddedDocumentBinaryObject mimeCode="application/pdf" filename="f.pdf">'
        + b"JVBERi0xLjQK"
        * 1_000_000
        + b"</cbc:EmbeddedDocumentBinaryObject></cac:Attachment>"
        b"</cac:AdditionalDocumentReference>"
    )
    # Where UBL puts it: before the parties, so the scan must read through it.
    document = invoice("F-huge").replace(
        b"<cac:AccountingSupplierParty>", attachment + b"<cac:AccountingSupplierParty>", 1
    )
    assert len(document) > 12_000_000

    async def main() -> None:
        async with running(config):
            drop(config, "huge.xml", document)
            await until(filed(config, 1), timeout=60, what="the huge invoice filed")

    asyncio.run(main())
    (row,) = rows(config)
    assert (row.state, row.reason, row.invoice_number) == ("sent", None, "F-huge")
    assert row.supplier_id  # read after the attachment


@pytest.mark.parametrize("levels", [0, 9], ids=["plain-dtd", "billion-laughs"])
def test_a_dtd_is_still_refused_in_a_large_document(
    tmp_path: Path, bucket: str, levels: int
) -> None:
    """Huge mode lifts libxml2's guard against entity expansion: a DTD is refused before any
    huge parse (by the DTD check, or by libxml2's amplification guard in the default mode)."""
    config = memory_config(tmp_path, bucket)
    laughs = (
        b'<?xml version="1.0"?>\n<!DOCTYPE Invoice [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode()
            for i in range(levels)
        )
        + b"]>\n"
    )
    last = chr(97 + levels).encode()
    document = laughs + invoice("F-dtd").replace(b"</Invoice>", b"<x>&" + last + b";</x></Invoice>")
    document = document.replace(b'<?xml version="1.0" encoding="UTF-8"?>', b"")

    async def main() -> None:
        async with running(config):
            drop(config, "laughs.xml", document + b" " * 2_000_000)
            await until(filed(config, 1), timeout=60, what="the DTD refused")

    asyncio.run(main())
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", "malformed_xml")
    assert "DTD" in (row.message or "") or "amplification" in (row.message or "")
    if not levels:
        assert "DTD" in (row.message or "")


def many_attributes(count: int) -> bytes:
    """A document whose root has ``count`` attributes: libxml2's duplicate check is quadratic."""
    attributes = b" ".join(b'a%d="x"' % i for i in range(count))
    return b"<Invoice xmlns='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2' " + (
        attributes + b"/>"
    )


def test_the_daemon_keeps_answering_and_logging_during_a_hostile_parse(
    tmp_path: Path, bucket: str
) -> None:
    """A parse that would take minutes (300,000 attributes on one element) runs in a worker:
    the event loop keeps its pace, /healthz answers and the logs go on while it runs, the file
    is filed as analysis_timeout after [gateway] analysis_timeout, and files dropped meanwhile
    are sent."""
    config = memory_config(
        tmp_path,
        bucket,
        gateway_extra=f'metrics = "127.0.0.1:{free_port()}"\nanalysis_timeout = "3s"',
    )
    hostile = many_attributes(300_000)

    async def main(gateway_box: list[Gateway]) -> tuple[float, list[int], int]:
        async with running(config) as gateway:
            gateway_box.append(gateway)
            assert gateway.metrics_server is not None
            url = f"http://127.0.0.1:{gateway.metrics_server.port}/healthz"
            drop(config, "hostile.xml", hostile)
            # The hostile parse has begun: its flow is journaled claimed (the state whose
            # step is the analysis) and its task is in flight.
            dispatcher = gateway.dispatcher
            assert dispatcher is not None
            await until(
                lambda: (
                    dispatcher.busy > 0
                    and any(
                        (r.original_name, r.state) == ("hostile.xml", "claimed")
                        for r in rows(config)
                    )
                ),
                what="the hostile file's analysis",
            )
            drop(config, "after.xml", invoice("F-after"))
            statuses: list[int] = []
            widest = 0.0
            last = time.monotonic()
            async with aiohttp.ClientSession() as client:
                while len([r for r in rows(config) if r.state in ("sent", "error")]) < 2:
                    async with client.get(url) as answer:
                        statuses.append(answer.status)
                    await asyncio.sleep(0.05)
                    now = time.monotonic()
                    widest, last = max(widest, now - last), now
                    assert len(statuses) < 2000, "never filed"
            return widest, statuses, len(statuses)

    boxes: list[Gateway] = []
    with capture_logs() as events:
        widest, statuses, count = asyncio.run(main(boxes))
    # Before, the daemon froze for the whole parse (44 s for 120,000 attributes); 2 s leaves
    # room for a loaded CI machine.
    assert widest < 2.0, f"the event loop stalled {widest:.1f} s"
    assert set(statuses) == {200} and count > 10
    by_name = {row.original_name: row for row in rows(config)}
    assert by_name["after.xml"].state == "sent"
    assert (by_name["hostile.xml"].state, by_name["hostile.xml"].reason) == (
        "error",
        "analysis_timeout",
    )
    sent_at = [e for e in events if e["event"] == "flow.sent"]
    failed_at = [e for e in events if e["event"] == "flow.failed"]
    assert sent_at and failed_at
    # The invoice dropped after the hostile one was sent while the hostile parse ran.
    assert events.index(sent_at[0]) < events.index(failed_at[0])


@pytest.mark.parametrize(
    "name",
    [
        "a" * 250 + ".xml",
        "é" * 120 + ".xml",  # 240 bytes
        "-" + "x" * 200 + "\nline.xml",
        "f" * 255,
    ],
    ids=["250-bytes", "multibyte", "dash-newline", "255-no-suffix"],
)
def test_any_name_the_file_system_allows_is_claimed_and_filed(
    tmp_path: Path, bucket: str, name: str
) -> None:
    """The spool name is shortened to fit the file system; the journal keeps the original;
    filing keeps it where it fits."""
    config = memory_config(tmp_path, bucket)
    data = invoice("F-long")
    staged = tmp_path / name  # a temporary name would be too long: written beside, renamed in
    staged.write_bytes(data)

    async def main() -> None:
        async with running(config):
            staged.rename(outbox(config) / name)
            await until(filed(config, 1), timeout=30, what="the long name filed")

    asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent" and row.original_name == name
    final = Path(row.final_path or "")
    assert final.read_bytes() == data
    assert len(os.fsencode(final.name)) <= 235
    receipt = sidecar(row, ".receipt.json")
    assert receipt["file"] == name
    if final.name != name:
        assert "~" in final.name and receipt["filed_as"] == final.name
        assert "too long" in receipt["filed_as_because"]


def test_entries_in_the_wrong_place_are_reported_once_each_and_counted(
    tmp_path: Path, bucket: str
) -> None:
    config = memory_config(tmp_path, bucket, rescan="200ms")
    root = Layout(config.gateway.data_dir).data_dir / "outbox"
    connection = config.connections[0].name
    typo = root / (connection[:-1] + "x")

    async def main() -> Gateway:
        async with running(config) as gateway:
            root.mkdir(parents=True, exist_ok=True)
            (root / "at-root.xml").write_bytes(invoice("F-root"))
            typo.mkdir()
            (typo / "in-typo.xml").write_bytes(invoice("F-typo"))
            scans = gateway.watcher.scans if gateway.watcher else 0
            await until(
                lambda: gateway.watcher is not None and gateway.watcher.scans > scans + 3,
                what="a few scans",
            )
            return gateway

    with capture_logs() as events:
        gateway = asyncio.run(main())
    ignored = [e for e in events if e["event"] == "intake.ignored"]
    assert len(ignored) == 2, ignored
    by_path = {Path(e["path"]).name: e for e in ignored}
    assert "outbox root" in by_path["at-root.xml"]["reason"]
    assert by_path["in-typo.xml"]["probably_meant"] == connection
    assert f"did you mean {connection!r}" in by_path["in-typo.xml"]["reason"]
    counted = {
        s.labels["where"]: s.value
        for m in gateway.metrics.registry.collect()
        if m.name == "raccord_intake_ignored"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counted == {"outbox_root": 1.0, "unknown_folder": 1.0}
    assert (root / "at-root.xml").exists() and (typo / "in-typo.xml").exists()


@pytest.mark.parametrize(
    "fault",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        sqlite3.OperationalError("database or disk is full"),
        OSError(errno.EROFS, "Read-only file system"),
    ],
    ids=["filing-enospc", "journal-full", "read-only"],
)
def test_a_full_data_dir_is_a_named_fault_retried_by_itself_when_space_returns(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    """Disk full (or read-only) on the local side is never internal_error: the flow waits,
    logs the named reason with what to do, and goes on by itself once the fault heals."""
    config = memory_config(tmp_path, bucket)
    monkeypatch.setattr(dispatcher_module, "HEAL_FIRST", 0.05)
    faults = {"left": 3}
    if isinstance(fault, OSError):
        real_place = Filer.place

        async def place(self: Filer, placement: Placement) -> None:
            if faults["left"]:
                faults["left"] -= 1
                raise fault
            await real_place(self, placement)

        monkeypatch.setattr(Filer, "place", place)
    else:
        real_call = Journal.call

        async def call(self: Journal, method: Any) -> Any:
            if getattr(method, "function", None) is JournalDB.insert and faults["left"]:
                faults["left"] -= 1
                raise fault
            return await real_call(self, method)

        monkeypatch.setattr(Journal, "call", call)

    async def main() -> None:
        async with running(config):
            drop(config, "inv.xml", invoice("F-full"))
            await until(filed(config, 1), timeout=30, what="the flow filed once healed")

    with capture_logs() as events:
        asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent" and faults["left"] == 0
    names = [e["event"] for e in events]
    assert "flow.internal_error" not in names
    local = [e for e in events if e["event"] == "flow.local_fault"]
    assert len(local) == 3
    expected = "local_read_only" if "Read-only" in str(fault) else "local_disk_full"
    assert {e["reason"] for e in local} == {expected}
    assert all("by itself" in e["action"] for e in local)


def test_a_file_raccord_may_not_read_is_refused_as_unreadable_with_what_to_do(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file dropped with an umask of 077 by another user: not internal_error, but
    unreadable, saying which permission to give. (Simulated: the tests run as root, whom
    permissions do not stop.)"""
    config = memory_config(tmp_path, bucket)

    async def denied(self: Analyser, path: Path, limit: int) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Analyser, "analyse", denied)
    with capture_logs() as events:
        deliver(config, {"private.xml": invoice("F-private")})
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", "unreadable")
    assert "chmod g+r" in (row.message or "") and "raccord retry" in (row.message or "")
    assert "flow.internal_error" not in [e["event"] for e in events]
