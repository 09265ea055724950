"""AS2 test set-up: a configuration with one AS2 connection (and, optionally, the receiver),
keys on disk; the partner's mirror view of a connection; a message built as one side."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from hypothesis import strategies as st

from gateway import config as config_module
from gateway.config import Config
from gateway.sandbox import pki
from protocols.as2 import message, stream
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair

AS2_CONFIG = """\
[gateway]
data_dir = "{data_dir}"
rescan_interval = "1s"
settle_time = "200ms"
shutdown_grace = "2s"
max_file_size = "{max_file_size}"
retry = {{ max_attempts = 3, initial = "50ms", max = "200ms" }}

[[connection]]
name = "qualif-as2"
environment = "qualification"
protocol = "as2"
partner_code = "VFE056"
valid_from = 2017-06-21
valid_to = 2099-06-30

[connection.interfaces]
FSO1100A = "complete"
FSO1106A = "partial"

[connection.as2]
url = "{url}"
as2_from = "MYCOMPANY"
as2_to = "CTAIFEP"
key = "{key}"
certificate = "{certificate}"
partner_certificate = "{partner_certificate}"
message_id_domain = "raccord.test"
timeout = "30s"
{as2_extra}
{receiver}
"""


def write_as2_config(
    tmp_path: Path,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    *,
    url: str = "http://127.0.0.1:9/",
    receiver_port: int | None = None,
    as2_extra: str = "",
    max_file_size: str = "30000KB",
) -> Config:
    keys = tmp_path / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    receiver = f'[as2_receiver]\nlisten = "127.0.0.1:{receiver_port}"' if receiver_port else ""
    path = tmp_path / "raccord.toml"
    path.write_text(
        AS2_CONFIG.format(
            data_dir=tmp_path / "data",
            url=url,
            key=pki.write_key(our_keys, keys / "our.key"),
            certificate=pki.write_certificates([our_keys.certificate], keys / "our.crt", "pem"),
            partner_certificate=pki.write_certificates(
                [partner_keys.certificate], keys / "partner.p7b", "p7b"
            ),
            as2_extra=as2_extra,
            receiver=receiver,
            max_file_size=max_file_size,
        )
    )
    return config_module.load(path)


def mirror(settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair) -> As2Settings:
    """The partner's view of the same connection (names and keys swapped)."""
    return replace(
        settings,
        as2_from=settings.as2_to,
        as2_to=settings.as2_from,
        keys=partner_keys,
        partner_chain=(our_keys.certificate,),
        message_id_domain="partner.test",
    )


def build_message(
    settings: As2Settings,
    data: bytes,
    message_id: str,
    *,
    filename: str = "FSO1100A_VFE056_0001.xml",
    mime_type: str = "application/octet-stream",
) -> message.Outgoing:
    """The message ``settings``' side sends for ``data``."""
    return message.build(
        message.organization(settings),
        message.partner(settings),
        data,
        message_id=message_id,
        filename=filename,
        subject="raccord test",
        mime_type=mime_type,
    )


def stream_message(
    settings: As2Settings,
    data: bytes,
    message_id: str,
    *,
    filename: str = "FSO1100A_VFE056_0001.xml",
) -> message.Outgoing:
    """The message the streaming builder makes for ``data`` (what the sender posts by default)."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "payload"
        source.write_bytes(data)
        with (Path(folder) / "body").open("w+b") as out:
            built = stream.build(
                settings, source, out, message_id=message_id, filename=filename, subject="test"
            )
            out.seek(0)
            body = out.read()
    assert built.size == len(body)
    return message.Outgoing(built.message_id, built.mic, built.mic_algorithm, built.headers, body)


def respelled(name: str) -> st.SearchStrategy[str]:
    """``name`` with each letter in either case (header names are case-insensitive)."""
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(
            c.upper() if u else c.lower() for c, u in zip(name, upper, strict=True)
        )
    )


def respelled_headers(headers: Mapping[str, str]) -> st.SearchStrategy[dict[str, str]]:
    """The same header fields, every name respelled independently."""
    names = list(headers)
    return st.tuples(*(respelled(name) for name in names)).map(
        lambda spelled: {new: headers[old] for new, old in zip(spelled, names, strict=True)}
    )
