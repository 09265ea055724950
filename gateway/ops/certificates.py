"""The certificates a configuration uses and how they stand: ``raccord certs`` (the portal's
"Analyser le(s) certificat(s)") and the expiry metric. AS2 connections: our certificate and its
chain, the partner's chain (order and completeness checked) and CA, the TLS client certificate;
the AS2 receiver's TLS certificate. SFTP keys and known hosts are plain keys, with no expiry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.config import Config
from protocols import certs
from protocols.as2.settings import As2Settings
from protocols.pesit.sender import PesitSettings

#: The ``connection`` of the AS2 receiver's own TLS certificate, which belongs to none.
RECEIVER = "[as2_receiver]"


@dataclass(frozen=True)
class InUse:
    connection: str  # a connection's name, or RECEIVER
    role: str
    certificate: x509.Certificate
    source: Path | None
    key: str = ""  # the configuration key naming ``source``, e.g. connection[x].as2.certificate


def in_use(config: Config) -> Iterator[InUse]:
    """Every certificate of the configuration, with the file it was read from.

    Raises:
        certs.CertificateProblem: a TLS certificate file cannot be read.
    """
    for conn in config.connections:
        settings = conn.settings
        where = f"connection[{conn.name}].{conn.protocol}"
        if isinstance(settings, As2Settings | PesitSettings) and settings.client_certificate:
            for cert in certs.load_certificates(settings.client_certificate):
                yield InUse(
                    conn.name,
                    "TLS client",
                    cert,
                    settings.client_certificate,
                    f"{where}.client_certificate",
                )
        if not isinstance(settings, As2Settings):
            continue
        # Our certificate (and chain) come from the certificate file, else from the key file.
        ours, ours_key = settings.certificate_path, f"{where}.certificate"
        if ours is None:
            ours, ours_key = settings.key_path, f"{where}.key"
        yield InUse(conn.name, "ours", settings.keys.certificate, ours, ours_key)
        for cert in settings.keys.chain:
            yield InUse(conn.name, "our chain", cert, ours, ours_key)
        for index, cert in enumerate(settings.partner_chain):
            role = "partner" if index == 0 else "partner chain"
            yield InUse(
                conn.name,
                role,
                cert,
                settings.partner_certificate_path,
                f"{where}.partner_certificate",
            )
        for cert in settings.partner_trust:
            yield InUse(
                conn.name, "partner CA", cert, settings.partner_ca_path, f"{where}.partner_ca"
            )
    receiver = config.as2_receiver
    if receiver is not None and receiver.tls_certificate is not None:
        for cert in certs.load_certificates(receiver.tls_certificate):
            yield InUse(
                RECEIVER,
                "TLS server",
                cert,
                receiver.tls_certificate,
                "as2_receiver.tls_certificate",
            )


def by_connection(config: Config) -> dict[str, list[InUse]]:
    """The certificates each connection's transfers depend on (the receiver's are not here)."""
    found: dict[str, list[InUse]] = {conn.name: [] for conn in config.connections}
    for item in in_use(config):
        if item.connection in found:
            found[item.connection].append(item)
    return found


def blocking(items: list[InUse], now: datetime) -> tuple[str, str] | None:
    """``(reason, message)`` when one of a connection's certificates is outside its validity
    period at ``now``: every transfer would fail (or be refused by the partner) until it is
    replaced, so the connection carries nothing and says why."""
    for item in items:
        cert = item.certificate
        role = {"ours": "own", "our chain": "own chain"}.get(item.role, item.role)
        where = f" ({item.source})" if item.source else ""
        fix = (
            "install a valid one, then reload raccord (systemctl reload raccord) and put the "
            "flows back with raccord retry --failed"
        )
        if cert.not_valid_after_utc < now:
            return (
                "certificate_expired",
                f"connection {item.connection} is blocked: its {role} certificate "
                f"{cert.subject.rfc4514_string()}{where} expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; {fix}",
            )
        if cert.not_valid_before_utc > now:
            return (
                "certificate_not_yet_valid",
                f"connection {item.connection} is blocked: its {role} certificate "
                f"{cert.subject.rfc4514_string()}{where} is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; {fix}",
            )
    return None


def state(cert: x509.Certificate, warn_days: int, now: datetime) -> str:
    """valid, expiring (within ``warn_days``), expired or not_yet_valid at ``now``."""
    if cert.not_valid_before_utc > now:
        return "not_yet_valid"
    left = (cert.not_valid_after_utc - now).total_seconds() / 86400
    if left < 0:
        return "expired"
    if left < warn_days:
        return "expiring"
    return "valid"


def report(config: Config, warn_days: int, now: datetime) -> list[dict[str, Any]]:
    """One record per certificate: who, what, validity, days left, state (valid, expiring,
    expired, not_yet_valid) and, on the partner's row, what is wrong with its chain."""
    records = []
    for item in in_use(config):
        cert = item.certificate
        left = (cert.not_valid_after_utc - now).total_seconds() / 86400
        problems: list[str] = []
        if item.role == "partner":
            conn = config.connection(item.connection)
            assert isinstance(conn.settings, As2Settings)
            problems = certs.chain_problems(  # each certificate's row gives its own validity
                conn.settings.partner_chain, conn.settings.partner_trust, now=now, dates=False
            )
        records.append(
            {
                "connection": item.connection,
                "role": item.role,
                "subject": certs.name(cert),
                "issuer": cert.issuer.rfc4514_string(),
                "serial": format(cert.serial_number, "x"),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "days_left": int(left // 1),
                "state": state(cert, warn_days, now),
                "chain_problems": "; ".join(problems) or None,
                "file": str(item.source) if item.source else None,
            }
        )
    return records
