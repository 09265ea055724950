"""The ``[connections.*]`` settings of a PeSIT connection, and what a flow's settings become:
the PI 12 / PI 37 / PI 99 name templates and the PI 13 transfer id.

What peers do differently is in these settings (docs/pesit.md): the entity header, the
pre-connection, what PI 12 / PI 37 / PI 99 carry, entity size, sync interval and window,
article format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from protocols import certs
from protocols.base import Outbound
from protocols.pesit.session import DATA_CODES
from protocols.settings import Secret, Section, SettingsError

TEMPLATE_FIELDS = ("interface", "remote_name", "flow_id", "stem")


@dataclass(frozen=True)
class PesitSettings:
    host: str
    port: int
    requester: str
    server: str
    password: Secret | None = None
    tls: bool = False
    ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    server_hostname: str | None = None
    nsdu_header: bool = True
    pre_connection: bool = False
    file_name: str = "{interface}"  # PI 12
    file_label: str = "{remote_name}"  # PI 37; "" leaves it out
    message: str = ""  # PI 99; "" leaves it out
    entity_size: int = 32768
    sync_interval: int = 32  # KB; 0: no sync points
    sync_window: int = 2
    article_format: str = "variable"
    article_length: int = 0  # 0: the entity size less the FPDU header
    multi_article: bool = False
    data_code: str = "binary"
    connect_timeout: float = 15.0
    timeout: float = 30.0
    restarts: int = 3
    max_parallel: int = 1
    return_files: tuple[str, ...] = ()  # PI 12 names to SELECT for return flows
    poll_interval: float = 60.0


def _template(section: Section, key: str, default: str) -> str:
    """A name template; its length limit is checked per flow, once it is filled in."""
    value = section.template(key, default, TEMPLATE_FIELDS)
    if not value.isascii():
        raise SettingsError(section.key(key), "PeSIT names are ASCII")
    return value


def name_fields(flow: Outbound) -> dict[str, str]:
    """The values of TEMPLATE_FIELDS for ``flow``."""
    return {
        "interface": flow.interface_code,
        "remote_name": flow.remote_name,
        "flow_id": flow.flow_id,
        "stem": Path(flow.remote_name).stem,
    }


def _identifier(section: Section, key: str) -> str:
    value = section.string(key, required=True)
    if not 1 <= len(value) <= 24 or not value.isascii():
        raise SettingsError(section.key(key), f"1 to 24 ASCII characters, got {value!r}")
    return value


def parse_settings(section: Section) -> PesitSettings:
    tls = section.boolean("tls", False)
    settings = PesitSettings(
        host=section.string("host", required=True),
        port=_port(section),
        requester=_identifier(section, "requester"),
        server=_identifier(section, "server"),
        password=section.secret("password", required=False),
        tls=tls,
        ca_bundle=section.path("ca_bundle", required=False),
        client_certificate=section.path("client_certificate", required=False),
        client_key=section.path("client_key", required=False),
        server_hostname=section.optional_str("server_hostname"),
        nsdu_header=section.boolean("nsdu_header", True),
        pre_connection=section.boolean("pre_connection", False),
        file_name=_template(section, "file_name", "{interface}"),
        file_label=_template(section, "file_label", "{remote_name}"),
        message=_template(section, "message", ""),
        entity_size=section.integer("entity_size", 32768, minimum=128, maximum=65535),
        sync_interval=section.integer("sync_interval", 32, minimum=0, maximum=65534),
        sync_window=section.integer("sync_window", 2, minimum=0, maximum=255),
        article_format=section.choice("article_format", ["variable", "fixed"], "variable"),
        article_length=section.integer("article_length", 0, minimum=0, maximum=65535),
        multi_article=section.boolean("multi_article", False),
        data_code=section.choice("data_code", list(DATA_CODES), "binary"),
        connect_timeout=section.duration("connect_timeout", "15s"),
        timeout=section.duration("timeout", "30s"),
        restarts=section.integer("restarts", 3, minimum=0, maximum=20),
        max_parallel=section.integer("max_parallel", 1, minimum=1, maximum=16),
        return_files=tuple(section.strings("return_files")),
        poll_interval=section.duration("poll_interval", "60s"),
    )
    for name in settings.return_files:
        if len(name) > 76 or not name.isascii():
            raise SettingsError(
                section.key("return_files"), f"{name!r}: PI 12 holds 76 ASCII characters"
            )
    password = settings.password.value if settings.password else ""
    if len(password) > 16 or not password.isascii():
        raise SettingsError(section.key("password"), "PI 5 holds at most 16 ASCII characters")
    if settings.pre_connection and (len(settings.requester) > 8 or len(password) > 8):
        raise SettingsError(
            section.key("pre_connection"),
            "the pre-connection carries the requester and password on 8 characters each",
        )
    if (settings.client_certificate is None) != (settings.client_key is None):
        raise SettingsError(
            section.key("client_key"), "give both client_certificate and client_key"
        )
    if not tls and (settings.ca_bundle or settings.client_certificate):
        raise SettingsError(section.key("tls"), "certificates are given but tls = false")
    problem = tls and certs.tls_problem(
        settings.ca_bundle, settings.client_certificate, settings.client_key
    )
    if problem:
        raise SettingsError(section.key(problem[0]), problem[1])
    section.finish()
    return settings


def _port(section: Section) -> int:
    if not section.has("port"):
        raise SettingsError(section.key("port"), "is required (no PeSIT port is standard)")
    return section.integer("port", 0, minimum=1, maximum=65535)


def transfer_id(flow_id: str) -> int:
    """PI 13 for a flow: the same at every attempt, non-zero, on 3 bytes."""
    return int.from_bytes(hashlib.sha256(flow_id.encode()).digest()[:3], "big") or 1
