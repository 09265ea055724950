"""``raccord demo`` and ``raccord simulate``.

The demo builds a complete, throw-away installation in one folder — keys, a partner simulator
standing in for Chorus Pro qualification, a configuration, a gateway — drops sample invoices
the way ops would (write under a temporary name, rename into the outbox), waits for each to be
filed, and prints where each went and under which remote name.
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
"""


def sample_documents(token: str) -> dict[str, bytes]:
    """The demo's drops: three sample invoices (numbers made unique), a Factur-X, a bad file."""
    samples = resources.files("gateway") / "samples"
    documents = {}
    for name in ("ubl-invoice.xml", "ubl-creditnote.xml", "cii-invoice.xml"):
        text = (samples / name).read_text(encoding="utf-8").replace("DEMO-", f"DEMO-{token}-")
        documents[name] = text.encode()
    documents["facturx-invoice.pdf"] = facturx_pdf(
        documents["cii-invoice.xml"].replace(b"-CII-0001", b"-FX-0001")
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


def wait_for_flows(journal: Path, count: int, timeout: float) -> list[FlowRow]:
    """Poll the journal until ``count`` flows are filed (sent/error) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[FlowRow] = []
        if journal.exists():
            db = JournalDB(journal)
            try:
                rows = db.search()
            finally:
                db.close()
        done = [row for row in rows if row.state in TERMINAL]
        if len(done) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


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


async def demo(folder: Path | None, *, wait: float = 60.0) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "raccord.log"
    print(f"raccord demo in {folder}")
    simulator, config_path = await _prepare(folder)
    try:
        config = config_module.load(config_path)
        with log_path.open("a", encoding="utf-8") as log_stream:
            logs.configure(log_stream)
            print(f"  partner simulator: sftp://127.0.0.1:{simulator.port} (Chorus Pro stand-in)")
            print(f"  configuration:     {config_path}")
            print(f"  JSON logs:         {log_path}")
            gateway = Gateway(config)
            stopping = asyncio.Event()
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
            rows = await asyncio.to_thread(wait_for_flows, layout.journal, len(documents), wait)
            stopping.set()
            await runner
    finally:
        await simulator.__aexit__(None, None, None)
    return _summary(rows, folder, len(documents))


def _summary(rows: list[FlowRow], folder: Path, expected: int) -> int:
    print()
    print(f"{'FILE':24} {'STATE':6} {'CODE':9} REMOTE NAME / REASON")
    for row in rows:
        detail = row.remote_name if row.state == "sent" else f"{row.reason}: {row.message}"
        print(f"{row.original_name:24} {row.state:6} {row.interface_code or '-':9} {detail}")
    uploaded = sorted(p.name for p in (folder / "partner" / UPLOAD_DIR).iterdir())
    print()
    print(f"On the partner side ({folder / 'partner' / UPLOAD_DIR}): {len(uploaded)} file(s)")
    for name in uploaded:
        print(f"  {name}")
    sent = [row for row in rows if row.state == "sent"]
    filed = [row for row in rows if row.state in TERMINAL]
    ok = len(filed) == expected and len(sent) == len(uploaded) == expected - 1
    print()
    if ok:
        print(
            f"Demo complete: {len(sent)} invoices delivered, 1 bad file set aside in error/ "
            "(as expected). Try: raccord flows --config " + str(folder / "raccord.toml")
        )
        return 0
    print(
        f"Demo FAILED: {len(filed)}/{expected} files filed, {len(sent)} sent, "
        f"{len(uploaded)} on the partner side; see {folder / 'raccord.log'}",
        file=sys.stderr,
    )
    return 1


async def simulate(folder: Path | None) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-simulator-"))
    simulator, config_path = await _prepare(folder)
    try:
        print(f"partner simulator: sftp://127.0.0.1:{simulator.port}")
        print(f"  uploads land in  {folder / 'partner' / UPLOAD_DIR}")
        print(f"  return flows in  {folder / 'partner' / DOWNLOAD_DIR}")
        print(f"  a matching configuration: {config_path}")
        print("Ctrl-C to stop.", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
    finally:
        await simulator.__aexit__(None, None, None)
    return 0
