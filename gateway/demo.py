"""``raccord demo`` and ``raccord simulate``.

The demo builds a complete, throw-away installation in one folder — keys, a partner simulator
standing in for Chorus Pro qualification, a configuration, a gateway — drops sample invoices
the way ops would (write under a temporary name, rename into the outbox), and follows them:
packed in lots per interface code, delivered over SFTP, answered by the simulator with a CPP
Statut return flow, fetched back and applied. One invoice in each of the UBL and CII lots
breaks the simulator's rejection rule, so the summary shows the same fault under Complète (the
UBL lot is rejected whole, its innocent invoices are resubmitted and integrated) and under
Partielle (only the faulty CII invoice is rejected).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import signal
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from gateway import config as config_module
from gateway import logs
from gateway.daemon import Gateway
from gateway.folders import Layout
from gateway.journal import TERMINAL, FlowRow, JournalDB
from gateway.simulator import (
    DOWNLOAD_DIR,
    UPLOAD_DIR,
    Desk,
    Rules,
    SftpSimulator,
    generate_keys,
    known_hosts_line,
)

CONNECTION = "qualif-sftp"

CONFIG_TEMPLATE = """\
# Written by `raccord demo`: a qualification connection to the local partner simulator.
[gateway]
data_dir = "{data_dir}"
rescan_interval = "5s"
settle_time = "1s"
retry = {{ max_attempts = 3, initial = "1s", max = "5s" }}

[[connection]]
name = "{connection}"
environment = "qualification"
protocol = "sftp"
partner_code = "VFE056"
structure = "12345678200010"
state = "active"
valid_from = 2017-06-21
valid_to = 2099-06-30
remote_name = "{{interface}}_{{partner_code}}_{{flow_id}}{{ext}}"
lot = {{ max_invoices = 10, max_wait = "1s", packaging = "tar.gz" }}
resubmit_collateral = true

[connection.interfaces]
FSO1100A = "complete"
FSO1106A = "partial"
FSO1117A = "partial"

[connection.sftp]
host = "127.0.0.1"
port = {port}
username = "vfe056"
private_key = "{private_key}"
known_hosts = "{known_hosts}"
upload_dir = "/{upload_dir}"
download_dir = "/{download_dir}"
poll_interval = "300ms"
"""

#: The simulator rejects invoices whose number matches this (one per lot in the demo).
REJECT_PATTERN = "REJ"


def sample_documents(token: str) -> dict[str, bytes]:
    """The demo's drops: UBL and CII invoices (numbers made unique, one of each breaking the
    simulator's rejection rule), a credit note, a Factur-X, and a file that is no invoice."""
    samples = resources.files("gateway") / "samples"

    def variant(name: str, old: str, new: str) -> bytes:
        text = (samples / name).read_text(encoding="utf-8").replace("DEMO-", f"DEMO-{token}-")
        return text.replace(old, new).encode()

    documents = {}
    for kind, sample in (("ubl", "ubl-invoice.xml"), ("cii", "cii-invoice.xml")):
        number = f"{kind.upper()}-0001"
        for suffix in ("0001", "0002", f"{REJECT_PATTERN}3"):
            documents[f"{kind}-invoice-{suffix.lower()}.xml"] = variant(
                sample, number, f"{kind.upper()}-{suffix}"
            )
    documents["ubl-creditnote.xml"] = variant("ubl-creditnote.xml", "", "")
    documents["facturx-invoice.pdf"] = facturx_pdf(
        variant("cii-invoice.xml", "CII-0001", "FX-0001")
    )
    documents["not-an-invoice.txt"] = b"Bonjour, ceci n'est pas une facture.\n"
    return documents


def facturx_pdf(xml: bytes) -> bytes:
    """A one-page PDF carrying ``xml`` as ``factur-x.xml`` (enough for the demo; not PDF/A-3)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.add_attachment("factur-x.xml", xml)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def drop(outbox: Path, name: str, data: bytes) -> None:
    """Drop a file as ops should: write under a ``.part`` name, then rename into place."""
    temp = outbox / f"{name}.part"
    temp.write_bytes(data)
    temp.rename(outbox / name)


def _rows(journal: Path) -> list[FlowRow]:
    if not journal.exists():
        return []
    db = JournalDB(journal)
    try:
        return db.search()
    finally:
        db.close()


def _settled(journal: Path, dropped: int) -> bool:
    """Every dropped file filed or packed; every lot sent and answered; the rejected
    Complète lot's innocent invoices resubmitted, sent and answered."""
    if not journal.exists():
        return False
    db = JournalDB(journal)
    try:
        rows = db.search()
        files = [row for row in rows if row.packaging is None]
        lots = [row for row in rows if row.packaging is not None]
        if len(files) < dropped or any(row.state not in TERMINAL for row in rows):
            return False
        if not any(row.resubmit_of for row in lots):
            return False
        return all(
            row.state == "sent" and any(s["position"] is None for s in db.statuses(row.flow_id))
            for row in lots
        )
    finally:
        db.close()


def wait_until_settled(journal: Path, dropped: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _settled(journal, dropped) and time.monotonic() < deadline:
        time.sleep(0.2)


async def _prepare(folder: Path) -> tuple[SftpSimulator, Path]:
    keys = generate_keys(folder / "simulator", folder / "keys" / "id_ed25519")
    simulator = SftpSimulator(folder / "partner", keys)
    await simulator.__aenter__()
    known_hosts = folder / "keys" / "known_hosts"
    known_hosts.write_text(known_hosts_line(keys.host_key, simulator.host, simulator.port))
    config_path = folder / "raccord.toml"
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            data_dir=folder / "data",
            connection=CONNECTION,
            port=simulator.port,
            private_key=folder / "keys" / "id_ed25519",
            known_hosts=known_hosts,
            upload_dir=UPLOAD_DIR,
            download_dir=DOWNLOAD_DIR,
        )
    )
    return simulator, config_path


def _desk(simulator: SftpSimulator, config: config_module.Config) -> Desk:
    """The simulator's answering desk, judging under the demo connection's modes."""
    modes = {code: mode.value for code, mode in config.connections[0].interfaces.items()}
    return Desk(
        simulator.root / UPLOAD_DIR,
        simulator.root / DOWNLOAD_DIR,
        Rules(modes, reject_pattern=REJECT_PATTERN),
    )


async def demo(folder: Path | None, *, wait: float = 90.0) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "raccord.log"
    print(f"raccord demo in {folder}")
    simulator, config_path = await _prepare(folder)
    stopping = asyncio.Event()
    try:
        config = config_module.load(config_path)
        desk = _desk(simulator, config)
        answering = asyncio.create_task(desk.run(stopping))
        with log_path.open("a", encoding="utf-8") as log_stream:
            logs.configure(log_stream)
            print(f"  partner simulator: sftp://127.0.0.1:{simulator.port} (Chorus Pro stand-in)")
            print(f"  rejection rule:    invoice numbers containing {REJECT_PATTERN!r}")
            print(f"  configuration:     {config_path}")
            print(f"  JSON logs:         {log_path}")
            gateway = Gateway(config)
            runner = asyncio.create_task(gateway.run(stopping))
            await asyncio.wait(
                {runner, asyncio.create_task(gateway.ready.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if runner.done():
                runner.result()
            layout = Layout(config.gateway.data_dir)
            documents = sample_documents(secrets.token_hex(3).upper())
            for name, data in documents.items():
                drop(layout.outbox(CONNECTION), name, data)
            print(f"  dropped {len(documents)} files in {layout.outbox(CONNECTION)}")
            await asyncio.to_thread(wait_until_settled, layout.journal, len(documents), wait)
            stopping.set()
            await runner
            await answering
    finally:
        stopping.set()
        await simulator.__aexit__(None, None, None)
    return _summary(layout.journal, folder, len(documents))


def _summary(journal: Path, folder: Path, expected: int) -> int:
    rows = _rows(journal)
    db = JournalDB(journal)
    try:
        lots = [row for row in rows if row.packaging is not None]
        invoices = {row.flow_id: db.invoices(row.flow_id) for row in lots}
    finally:
        db.close()
    files = [row for row in rows if row.packaging is None]
    print()
    print(f"{'FILE':28} {'STATE':7} {'CODE':9} LOT / REASON")
    for row in files:
        detail = row.lot_id if row.state == "packed" else f"{row.reason}: {row.message}"
        print(f"{row.original_name:28} {row.state:7} {row.interface_code or '-':9} {detail}")
    print()
    print(f"{'LOT':24} {'CODE':9} {'MODE':9} RETURN (CPP Statut, applied)")
    for lot in lots:
        items = invoices[lot.flow_id]
        rejected = [i for i in items if i["rejected"]]
        collateral = [i for i in rejected if i["collateral"]]
        integrated = [i for i in items if not i["rejected"] and i["status_code"] == "01"]
        plural = "s" if len(items) != 1 else ""
        outcome = (
            f"{len(items)} invoice{plural}: {len(integrated)} deposited, {len(rejected)} rejected"
        )
        if collateral:
            outcome += f" ({len(collateral)} only because of another invoice)"
        if lot.resubmit_of:
            outcome += f" — resubmission of {lot.resubmit_of}"
        print(f"{lot.flow_id:24} {lot.interface_code or '-':9} {lot.mode or '-':9} {outcome}")
    print(f"  remote names: {', '.join(lot.remote_name or '?' for lot in lots)}")
    uploaded = sorted(p.name for p in (folder / "partner" / UPLOAD_DIR).iterdir())
    rejected_dir = folder / "data" / "rejected" / CONNECTION
    copies = sorted(p.name for p in rejected_dir.iterdir() if not p.name.endswith(".json"))
    print()
    print(f"On the partner side: {len(uploaded)} lot(s) in {folder / 'partner' / UPLOAD_DIR}")
    print(f"Rejected invoices, with .rejection.json: {', '.join(copies)} in {rejected_dir}")
    complete = [lot for lot in lots if lot.mode == "complete" and not lot.resubmit_of]
    partial = [lot for lot in lots if lot.interface_code == "FSO1106A"]
    resubmitted = [lot for lot in lots if lot.resubmit_of]
    ok = (
        len(files) == expected
        and [row.original_name for row in files if row.state == "error"] == ["not-an-invoice.txt"]
        and len(complete) == 1
        and all(i["rejected"] for i in invoices[complete[0].flow_id])
        and len(partial) == 1
        and sum(i["rejected"] for i in invoices[partial[0].flow_id]) == 1
        and len(resubmitted) == 1
        and all(i["status_code"] == "01" for i in invoices[resubmitted[0].flow_id])
        and len(uploaded) == len(lots)
    )
    print()
    if ok:
        print(
            "Demo complete: the same fault sank the whole UBL lot under Complète (its innocent "
            "invoices were resubmitted and integrated) and only the faulty CII invoice under "
            "Partielle; the file that is no invoice was set aside in error/. "
            f"Try: raccord flows --config {folder / 'raccord.toml'}"
        )
        return 0
    print(
        f"Demo FAILED: {len(files)}/{expected} files journaled, {len(lots)} lots, "
        f"{len(uploaded)} on the partner side; see {folder / 'raccord.log'}",
        file=sys.stderr,
    )
    return 1


async def simulate(folder: Path | None) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-simulator-"))
    simulator, config_path = await _prepare(folder)
    stopping = asyncio.Event()
    try:
        config = config_module.load(config_path)
        desk = _desk(simulator, config)
        print(f"partner simulator: sftp://127.0.0.1:{simulator.port}")
        print(f"  uploads land in  {folder / 'partner' / UPLOAD_DIR}")
        print(f"  return flows in  {folder / 'partner' / DOWNLOAD_DIR} (a CPP Statut per deposit)")
        print(f"  rejects invoice numbers containing {REJECT_PATTERN!r}; modes {desk.rules.modes}")
        print(f"  a matching configuration: {config_path}")
        print("Ctrl-C to stop.", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        await desk.run(stopping)
    finally:
        stopping.set()
        await simulator.__aexit__(None, None, None)
    return 0
