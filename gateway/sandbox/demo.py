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
import json
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway import config as config_module
from gateway import logs
from gateway.daemon import Gateway
from gateway.folders import Layout
from gateway.journal import TERMINAL, FlowRow, JournalDB
from gateway.sandbox import pki
from gateway.sandbox.as2_partner import As2Simulator, partner_settings
from gateway.sandbox.chorus import (
    DOWNLOAD_DIR,
    UPLOAD_DIR,
    Desk,
    Rules,
    SftpSimulator,
    generate_keys,
    known_hosts_line,
)
from gateway.sandbox.pesit_partner import Account, PesitResponder
from gateway.sandbox.piste_partner import PisteStandIn
from protocols import certs

CONNECTION = "qualif-sftp"
AS2_CONNECTION = "qualif-as2"
PESIT_CONNECTION = "qualif-pesit"
PISTE_CONNECTION = "qualif-piste"
#: The simulated PISTE application and Chorus Pro technical account.
PISTE_CLIENT_ID, PISTE_LOGIN = "raccord-demo-app", "TECH_1_VFE056@cpp2017.fr"
#: The PeSIT identifiers: ours (PI 3) and the simulated Chorus Pro's (PI 4).
PESIT_US, PESIT_PARTNER = "VFE056", "CHORUSPRO"
#: The AS2 names: ours, and the simulated Chorus Pro's.
AS2_US, AS2_PARTNER = "MYCOMPANY", "CTAIFEP"

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
validation = "block"             # invalid invoices (EN 16931) are held back in error/
validation_rules = ["en16931"]
remote_name = "{{interface}}_{{partner_code}}_{{flow_id}}{{ext}}"
lot = {{ max_invoices = 10, max_wait = "2s", packaging = "tar.gz" }}
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

[[connection]]
name = "{as2_connection}"
environment = "qualification"
protocol = "as2"
partner_code = "VFE056"
structure = "12345678200028"  # another establishment: one connection per code each
state = "active"
valid_from = 2017-06-21
valid_to = 2099-06-30
validation = "block"             # invalid invoices (EN 16931) are held back in error/
validation_rules = ["en16931"]

[connection.interfaces]
FSO1100A = "complete"
FSO1106A = "partial"

[connection.as2]
url = "http://127.0.0.1:{as2_port}/"
as2_from = "{as2_us}"
as2_to = "{as2_partner}"
key = "{as2_key}"
certificate = "{as2_certificate}"
partner_certificate = "{as2_partner_certificate}"
encryption = "aes_256_cbc"
signature = "sha256"
mdn = "sync-signed"
message_id_domain = "raccord.demo"
timeout = "30s"

[[connection]]
name = "{pesit_connection}"
environment = "qualification"
protocol = "pesit"
partner_code = "VFE056"
structure = "12345678200036"  # a third establishment
state = "active"
valid_from = 2017-06-21
valid_to = 2099-06-30
validation = "block"             # invalid invoices (EN 16931) are held back in error/
validation_rules = ["en16931"]

[connection.interfaces]
FSO1100A = "complete"
FSO1106A = "partial"

[connection.pesit]
host = "127.0.0.1"
port = {pesit_port}
requester = "{pesit_requester}"
server = "{pesit_server}"
password = {{ file = "{pesit_password}" }}
file_name = "{{interface}}"        # PI 12
file_label = "{{remote_name}}"     # PI 37
sync_interval = 32               # KB between sync points
sync_window = 2
return_files = ["FEN1200A"]      # PI 12 names SELECTed for return flows
poll_interval = "300ms"

[[connection]]
name = "{piste_connection}"
environment = "qualification"
protocol = "piste"
partner_code = "VFE056"
structure = "12345678200044"  # a fourth establishment
state = "active"
valid_from = 2017-06-21
valid_to = 2099-06-30
validation = "block"             # invalid invoices (EN 16931) are held back in error/
validation_rules = ["en16931"]

[connection.interfaces]
FSO1100A = "complete"
FSO1106A = "partial"

[connection.piste]
client_id = "{piste_client_id}"
client_secret = {{ file = "{piste_secret}" }}
technical_login = "{piste_login}"
technical_password = {{ file = "{piste_password}" }}
oauth_url = "{piste_oauth_url}"   # the stand-in; by default the environment's PISTE hosts
api_url = "{piste_api_url}"
report_interval = "300ms"        # integration reports asked for after, then doubling
report_max_interval = "2s"

# Where the simulator pushes its CPP Statut answers to AS2 deposits.
[as2_receiver]
listen = "127.0.0.1:{receiver_port}"
"""

#: The simulator rejects invoices whose number matches this (one per lot in the demo).
REJECT_PATTERN = "REJ"
#: The drop that breaks an EN 16931 rule: held back by validation, never sent.
INVALID = "ubl-invoice-invalid.xml"


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
        as2 = [row for row in files if row.connection == AS2_CONNECTION]
        return all(
            row.state == "sent" and any(s["position"] is None for s in db.statuses(row.flow_id))
            for row in lots + as2
        )
    finally:
        db.close()


def wait_until_settled(journal: Path, dropped: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _settled(journal, dropped) and time.monotonic() < deadline:
        time.sleep(0.2)


@dataclass
class Partner:
    """The simulated Chorus Pro: its SFTP and AS2 sides, and a desk answering each."""

    sftp: SftpSimulator
    as2: As2Simulator
    pesit: PesitResponder
    piste: PisteStandIn
    desks: tuple[Desk, Desk, Desk]  # SFTP, AS2, PeSIT
    config_path: Path
    exits: AsyncExitStack  # stops both sides

    async def run(self, stopping: asyncio.Event) -> None:
        """Answer deposits and push AS2 answers until ``stopping``."""
        await asyncio.gather(
            *(desk.run(stopping) for desk in self.desks), self.as2.push_returns(stopping)
        )

    async def close(self) -> None:
        await self.exits.aclose()


def _secret_file(path: Path) -> Path:
    """A random secret kept in ``path`` (0600), made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(8) + "\n")
        path.chmod(0o600)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as2_keys(path: Path, name: str) -> certs.KeyPair:
    """A key and certificate kept at ``path`` (.key, .crt), made on first use."""
    key, certificate = path.with_suffix(".key"), path.with_suffix(".crt")
    if key.exists() and certificate.exists():
        return certs.load_key_pair(key, certificate, None)
    pair = pki.issue(name, days=730)
    path.parent.mkdir(parents=True, exist_ok=True)
    pki.write_key(pair, key)
    pki.write_certificates([pair.certificate], certificate, "pem")
    return pair


async def _prepare(folder: Path) -> Partner:
    """Keys, the simulator's two sides on loopback, and a configuration that reaches them."""
    keys = generate_keys(folder / "simulator", folder / "keys" / "id_ed25519")
    exits = AsyncExitStack()
    try:
        sftp = await exits.enter_async_context(SftpSimulator(folder / "partner", keys))
        known_hosts = folder / "keys" / "known_hosts"
        known_hosts.write_text(known_hosts_line(keys.host_key, sftp.host, sftp.port))
        ours = _as2_keys(folder / "keys" / "as2", f"{AS2_US} AS2")
        theirs = _as2_keys(folder / "simulator" / "as2", f"{AS2_PARTNER} AS2")
        # Chorus Pro hands its certificate out as PKCS#7: so does the demo.
        partner_certificate = pki.write_certificates(
            [theirs.certificate], folder / "keys" / "chorus-pro-as2.p7b", "p7b"
        )
        receiver_port = _free_port()
        as2_root = folder / "partner-as2"
        as2 = As2Simulator(
            as2_root / UPLOAD_DIR,
            as2_root / DOWNLOAD_DIR,
            partner_settings(
                theirs,
                ours.certificate,
                as2_from=AS2_PARTNER,
                as2_to=AS2_US,
                url=f"http://127.0.0.1:{receiver_port}/",
            ),
        )
        await exits.enter_async_context(as2)
        pesit_password = folder / "keys" / "pesit.password"
        if not pesit_password.exists():
            pesit_password.write_text(secrets.token_hex(4) + "\n")
            pesit_password.chmod(0o600)
        pesit = PesitResponder(
            folder / "partner-pesit",
            {PESIT_US: Account(pesit_password.read_text().strip())},
            server_id=PESIT_PARTNER,
        )
        await exits.enter_async_context(pesit)
        piste_secret, piste_password = (
            _secret_file(folder / "keys" / name) for name in ("piste.secret", "piste.password")
        )
        piste = PisteStandIn(
            folder / "partner-piste",
            Rules(),  # judged under the connection's modes once the configuration is read
            client_id=PISTE_CLIENT_ID,
            client_secret=piste_secret.read_text().strip(),
            login=PISTE_LOGIN,
            password=piste_password.read_text().strip(),
        )
        await exits.enter_async_context(piste)
        config_path = folder / "raccord.toml"
        config_path.write_text(
            CONFIG_TEMPLATE.format(
                data_dir=folder / "data",
                connection=CONNECTION,
                port=sftp.port,
                private_key=folder / "keys" / "id_ed25519",
                known_hosts=known_hosts,
                upload_dir=UPLOAD_DIR,
                download_dir=DOWNLOAD_DIR,
                as2_connection=AS2_CONNECTION,
                as2_port=as2.port,
                as2_us=AS2_US,
                as2_partner=AS2_PARTNER,
                as2_key=folder / "keys" / "as2.key",
                as2_certificate=folder / "keys" / "as2.crt",
                as2_partner_certificate=partner_certificate,
                receiver_port=receiver_port,
                pesit_connection=PESIT_CONNECTION,
                pesit_port=pesit.port,
                pesit_requester=PESIT_US,
                pesit_server=PESIT_PARTNER,
                pesit_password=pesit_password,
                piste_connection=PISTE_CONNECTION,
                piste_client_id=PISTE_CLIENT_ID,
                piste_secret=piste_secret,
                piste_login=PISTE_LOGIN,
                piste_password=piste_password,
                piste_oauth_url=piste.oauth_url,
                piste_api_url=piste.api_url,
            )
        )
        config = config_module.load(config_path)
        desks = (
            _desk(sftp.root / UPLOAD_DIR, sftp.root / DOWNLOAD_DIR, config.connection(CONNECTION)),
            _desk(as2.deposits, as2.returns, config.connection(AS2_CONNECTION)),
            _desk(pesit.deposits, pesit.returns, config.connection(PESIT_CONNECTION)),
        )
        piste.rules = _desk(piste.root, piste.root, config.connection(PISTE_CONNECTION)).rules
        return Partner(sftp, as2, pesit, piste, desks, config_path, exits)
    except BaseException:  # nothing left running if the set-up fails half-way
        await exits.aclose()
        raise


def _desk(deposits: Path, returns: Path, connection: config_module.Connection) -> Desk:
    """An answering desk, judging under the connection's modes."""
    modes = {code: mode.value for code, mode in connection.interfaces.items()}
    return Desk(deposits, returns, Rules(modes, reject_pattern=REJECT_PATTERN))


async def demo(folder: Path | None, *, wait: float = 90.0) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "raccord.log"
    print(f"raccord demo in {folder}")
    partner = await _prepare(folder)
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
    return _summary(layout.journal, folder, len(documents), len(over_as2))


def _summary(journal: Path, folder: Path, expected: int, expected_as2: int) -> int:
    rows = _rows(journal)
    db = JournalDB(journal)
    try:
        lots = [row for row in rows if row.packaging is not None]
        invoices = {row.flow_id: db.invoices(row.flow_id) for row in lots}
        over_as2 = [row for row in rows if row.connection == AS2_CONNECTION]
        as2_invoices = {row.flow_id: db.invoices(row.flow_id) for row in over_as2}
    finally:
        db.close()
    files = [row for row in rows if row.packaging is None and row.connection == CONNECTION]
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
    as2_ok = _as2_summary(over_as2, as2_invoices)
    complete = [lot for lot in lots if lot.mode == "complete" and not lot.resubmit_of]
    partial = [lot for lot in lots if lot.interface_code == "FSO1106A"]
    resubmitted = [lot for lot in lots if lot.resubmit_of]
    held = [row for row in files if row.reason == "invalid_invoice"]
    for row in held:
        checked = json.loads(row.validation or "{}")
        print()
        print(f"Held back by validation (EN 16931): {row.original_name}, in error/{CONNECTION}/")
        for error in checked.get("errors", []):
            print(f"  {error['rule']}  {error['message']}  {error['location']}")
    failed = sorted(row.original_name for row in files if row.state == "error")
    ok = (
        len(files) == expected
        and failed == sorted(["not-an-invoice.txt", INVALID])
        and [row.original_name for row in held] == [INVALID]
        and "BR-10" in (held[0].message or "")
        and len(complete) == 1
        and all(i["rejected"] for i in invoices[complete[0].flow_id])
        and len(partial) == 1
        and sum(i["rejected"] for i in invoices[partial[0].flow_id]) == 1
        and len(resubmitted) == 1
        and all(i["status_code"] == "01" for i in invoices[resubmitted[0].flow_id])
        and len(uploaded) == len(lots)
        and len(over_as2) == expected_as2
        and as2_ok
    )
    print()
    if ok:
        print(
            "Demo complete: the same fault sank the whole UBL lot under Complète (its innocent "
            "invoices were resubmitted and integrated) and only the faulty CII invoice under "
            "Partielle; the file that is no invoice was set aside in error/, and so was the "
            "invoice that breaks EN 16931 rule BR-10 (validation = block); over AS2, each "
            "invoice's signed MDN was verified (MIC included) and its status came back over AS2. "
            f"Try: raccord flows --config {folder / 'raccord.toml'}"
        )
        return 0
    print(
        f"Demo FAILED: {len(files)}/{expected} files journaled, {len(lots)} lots, "
        f"{len(uploaded)} on the partner side, {len(over_as2)}/{expected_as2} AS2 flows; "
        f"see {folder / 'raccord.log'}",
        file=sys.stderr,
    )
    return 1


def _as2_summary(rows: list[FlowRow], invoices: dict[str, list[dict[str, Any]]]) -> bool:
    """Print the AS2 flows (Message-ID, MDN, return status); whether each went as it should:
    sent with a positive MDN confirming our MIC, and integrated (status 01)."""
    print()
    print(f"AS2 ({AS2_CONNECTION} -> {AS2_PARTNER}: sha256 + AES-256, synchronous signed MDN)")
    print(f"{'FILE':22} {'STATE':7} {'MESSAGE-ID':40} {'MDN':10} RETURN")
    ok = True
    for row in rows:
        answer = json.loads(row.receipt or "{}").get("partner_answer", {})
        disposition = str(answer.get("mdn_disposition", "-")).rsplit(";", 1)[-1].strip()
        statuses = [str(i["status_code"]) for i in invoices[row.flow_id]]
        message_id = str(answer.get("message_id", "-"))
        print(
            f"{row.original_name:22} {row.state:7} {message_id:40} {disposition:10} "
            f"{', '.join(s for s in statuses if s != 'None') or '-'}"
        )
        ok = ok and (
            row.state == "sent"
            and disposition == "processed"
            and answer.get("mdn_mic") == answer.get("mic")
            and statuses == ["01"]
        )
    return ok


async def simulate(folder: Path | None) -> int:
    folder = folder or Path(tempfile.mkdtemp(prefix="raccord-simulator-"))
    partner = await _prepare(folder)
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
