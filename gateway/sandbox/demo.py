"""``raccord demo`` and ``raccord simulate``.

The demo builds a complete, throw-away installation in one folder — keys, a partner simulator
standing in for Chorus Pro qualification, a configuration, a gateway — drops sample invoices
the way ops would (write under a temporary name, rename into the outbox), and follows them:
packed in lots per interface code, delivered over SFTP, answered by the simulator with a CPP
Statut return flow, fetched back and applied. One invoice in each of the UBL and CII lots
breaks the simulator's rejection rule, so the summary shows the same fault under Complète (the
UBL lot is rejected whole, its innocent invoices are resubmitted and integrated) and under
Partielle (only the faulty CII invoice is rejected). Two more invoices go over AS2 to the
simulator's AS2 side (signed, encrypted, synchronous signed MDN verified), and their CPP Statut
comes back over AS2 to the gateway's receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import secrets
import signal
import tempfile
import time
from importlib import resources
from pathlib import Path

from gateway import config as config_module
from gateway import logs
from gateway.daemon import Gateway
from gateway.folders import Layout
from gateway.journal import TERMINAL, JournalDB, JournalTarget
from gateway.sandbox.chorus import DOWNLOAD_DIR, UPLOAD_DIR
from gateway.sandbox.demo_report import summary
from gateway.sandbox.demo_setup import (
    AS2_CONNECTION,
    AS2_PARTNER,
    AS2_US,
    CONNECTION,
    INVALID,
    PESIT_PARTNER,
    PESIT_US,
    PISTE_CLIENT_ID,
    PISTE_LOGIN,
    REJECT_PATTERN,
    prepare,
)

__all__ = [
    "AS2_CONNECTION",
    "CONNECTION",
    "REJECT_PATTERN",
    "as2_documents",
    "demo",
    "drop",
    "facturx_pdf",
    "sample_documents",
    "simulate",
    "wait_until_settled",
]


def sample_documents(token: str) -> dict[str, bytes]:
    """The demo's drops: UBL and CII invoices (numbers made unique, one of each breaking the
    simulator's rejection rule), a credit note, a Factur-X, and a file that is no invoice."""
    samples = resources.files("gateway.sandbox") / "samples"

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
    # Without the buyer's postal address: breaks EN 16931 rule BR-10, held back before sending.
    documents[INVALID] = re.sub(
        rb"(<cac:AccountingCustomerParty>.*?)<cac:PostalAddress>.*?</cac:PostalAddress>",
        rb"\1",
        variant("ubl-invoice.xml", "UBL-0001", "UBL-0004"),
        flags=re.DOTALL,
    )
    documents["facturx-invoice.pdf"] = facturx_pdf(
        variant("cii-invoice.xml", "CII-0001", "FX-0001")
    )
    documents["not-an-invoice.txt"] = b"Bonjour, ceci n'est pas une facture.\n"
    return documents


def as2_documents(token: str) -> dict[str, bytes]:
    """The demo's AS2 drops: one UBL and one CII invoice, each its own flow."""
    samples = resources.files("gateway.sandbox") / "samples"
    documents = {}
    for kind, sample in (("ubl", "ubl-invoice.xml"), ("cii", "cii-invoice.xml")):
        text = (samples / sample).read_text(encoding="utf-8").replace("DEMO-", f"DEMO-{token}-")
        number = f"{kind.upper()}-0001"
        documents[f"as2-{kind}-invoice.xml"] = text.replace(number, f"AS2-{kind.upper()}").encode()
    return documents


def facturx_pdf(xml: bytes) -> bytes:
    """A one-page PDF carrying ``xml`` as ``factur-x.xml``, with the XMP metadata that declares
    its profile, made by the factur-x package's own generator."""
    from facturx import generate_from_binary
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    pdf: bytes = generate_from_binary(buffer.getvalue(), xml, check_xsd=False)
    return pdf


def drop(outbox: Path, name: str, data: bytes) -> None:
    """Drop a file as ops should: write under a ``.part`` name, then rename into place."""
    temp = outbox / f"{name}.part"
    temp.write_bytes(data)
    temp.rename(outbox / name)


def _settled(journal: JournalTarget, dropped: int) -> bool:
    """Every dropped file filed or packed; every lot sent and answered; the rejected
    Complète lot's innocent invoices resubmitted, sent and answered."""
    if isinstance(journal, Path) and not journal.exists():
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
        as2 = [row for row in files if row.connection == AS2_CONNECTION]
        return all(
            row.state == "sent" and any(s["position"] is None for s in db.statuses(row.flow_id))
            for row in lots + as2
        )
    finally:
        db.close()


def wait_until_settled(journal: JournalTarget, dropped: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _settled(journal, dropped) and time.monotonic() < deadline:
        time.sleep(0.2)


async def demo(folder: Path | None, *, wait: float = 90.0) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "raccord.log"
    print(f"raccord demo in {folder}")
    partner = await prepare(folder)
    stopping = asyncio.Event()
    try:
        config = config_module.load(partner.config_path)
        answering = asyncio.create_task(partner.run(stopping))
        with log_path.open("a", encoding="utf-8") as log_stream:
            logs.configure(log_stream)
            sftp_url = f"sftp://127.0.0.1:{partner.sftp.port}"
            print(f"  partner simulator: {sftp_url} (Chorus Pro stand-in)")
            print(f"                     {partner.as2.url} (AS2 {AS2_PARTNER})")
            print(f"  rejection rule:    invoice numbers containing {REJECT_PATTERN!r}")
            print(f"  configuration:     {partner.config_path}")
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
            token = secrets.token_hex(3).upper()
            documents = sample_documents(token)
            for name, data in documents.items():
                drop(layout.outbox(CONNECTION), name, data)
            print(f"  dropped {len(documents)} files in {layout.outbox(CONNECTION)}")
            over_as2 = as2_documents(token)
            for name, data in over_as2.items():
                drop(layout.outbox(AS2_CONNECTION), name, data)
            print(f"  dropped {len(over_as2)} files in {layout.outbox(AS2_CONNECTION)}")
            dropped = len(documents) + len(over_as2)
            await asyncio.to_thread(wait_until_settled, layout.journal, dropped, wait)
            stopping.set()
            await runner
            await answering
    finally:
        stopping.set()
        await partner.close()
    return summary(layout.journal, folder, len(documents), len(over_as2))


async def simulate(folder: Path | None) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-simulator-"))
    partner = await prepare(folder)
    stopping = asyncio.Event()
    try:
        sftp_desk, as2_desk, _ = partner.desks
        print(f"partner simulator: sftp://127.0.0.1:{partner.sftp.port}")
        print(f"  uploads land in  {folder / 'partner' / UPLOAD_DIR}")
        print(f"  return flows in  {folder / 'partner' / DOWNLOAD_DIR} (a CPP Statut per deposit)")
        print(f"partner simulator: {partner.as2.url} (AS2 {AS2_PARTNER}, expects {AS2_US})")
        print(f"  deposits land in {as2_desk.deposits}")
        print(f"  CPP Statut answers are pushed to the gateway at {partner.as2.settings.url}")
        pesit = partner.pesit
        print(f"partner simulator: pesit://127.0.0.1:{pesit.port} (PeSIT E server {PESIT_PARTNER})")
        print(f"  expects requester {PESIT_US}, password in {folder / 'keys' / 'pesit.password'}")
        print(f"  deposits land in {pesit.deposits}; a CPP Statut per deposit is served to SELECT")
        print(f"  (READ, with sync points) from {pesit.returns}")
        piste = partner.piste
        print(f"partner simulator: {piste.api_url} (PISTE and the Chorus Pro API)")
        print(
            f"  OAuth2 at {piste.oauth_url}; application {PISTE_CLIENT_ID}, account {PISTE_LOGIN}"
        )
        print(f"  deposits land in {piste.root / 'depot'}; reports say IN_INTEGRE, ")
        print("  IN_INTEGRE_PARTIEL or IN_REJETE under the connection's modes")
        modes = sftp_desk.rules.modes
        print(f"  rejects invoice numbers containing {REJECT_PATTERN!r}; modes {modes}")
        print(f"  a matching configuration: {partner.config_path}")
        print("Ctrl-C to stop.", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        await partner.run(stopping)
    finally:
        stopping.set()
        await partner.close()
    return 0
