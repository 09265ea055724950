"""The demo's throw-away installation: keys, the simulated Chorus Pro on loopback (its
SFTP, AS2, PeSIT and PISTE sides, and a desk answering each) and a configuration reaching it.

Used by ``raccord demo`` and ``raccord simulate`` (:mod:`gateway.sandbox.demo`).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from gateway import config as config_module
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


async def prepare(folder: Path) -> Partner:
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
