"""The top-level sections besides ``[[connection]]``: ``[gateway]``, ``[as2_receiver]``,
``[alerts]`` and ``[web]``, each read into its settings object (or None when absent)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from gateway.config.model import (
    AlertSettings,
    As2ReceiverSettings,
    GatewaySettings,
    JournalSettings,
    Retry,
    SmtpSettings,
    WebSettings,
)
from protocols.settings import Section, SettingsError


def gateway_settings(section: Section) -> GatewaySettings:
    data_dir = section.path("data_dir", required=False) or Path("/var/lib/raccord")
    retry_section = section.table("retry") or Section({}, section.key("retry"))
    retry = Retry(
        max_attempts=retry_section.integer("max_attempts", 8, minimum=1, maximum=1000),
        initial=retry_section.duration("initial", "5s"),
        maximum=retry_section.duration("max", "10m"),
    )
    retry_section.finish()
    metrics = section.optional_str("metrics")
    analysis_timeout = section.duration("analysis_timeout", "20s")
    if analysis_timeout <= 0:
        raise SettingsError(section.key("analysis_timeout"), "must be more than 0s")
    settings = GatewaySettings(
        data_dir=data_dir,
        max_file_size=section.size("max_file_size", "30000KB"),
        metrics=_address(section, "metrics", metrics, "127.0.0.1:9464") if metrics else None,
        rescan_interval=section.duration("rescan_interval", "30s"),
        settle_time=section.duration("settle_time", "2s"),
        analysis_timeout=analysis_timeout,
        retry=retry,
        shutdown_grace=section.duration("shutdown_grace", "20s"),
        warn_days=section.integer("warn_days", 30, minimum=0, maximum=3650),
        retention=_retention(section),
        retention_files=section.boolean("retention_files", False),
        validation_workers=section.integer("validation_workers", 0, minimum=0, maximum=64),
        node_name=_node_name(section),
    )
    section.finish()
    return settings


def _node_name(section: Section) -> str:
    """``node_name``: how this node is named in the journal; absent: the host name."""
    name = section.optional_str("node_name") or socket.gethostname()
    # It names the node's lock file in data_dir: two names may not end up as one file.
    if not _NODE_NAME.fullmatch(name):
        raise SettingsError(
            section.key("node_name"),
            f"{name!r}: 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or a digit "
            "(set node_name when the host name is not one)",
        )
    return name


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def journal_settings(section: Section | None) -> JournalSettings:
    """``[journal]``: absent, SQLite in data_dir; ``url = "postgresql://…"``: shared."""
    if section is None:
        return JournalSettings()
    url = section.optional_str("url")
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(section.key("url"), 'a "postgresql://user@host/database" URL')
    lease_timeout = section.duration("lease_timeout", "30s")
    if lease_timeout < 5:
        raise SettingsError(section.key("lease_timeout"), "at least 5s")
    settings = JournalSettings(
        url=url,
        password=section.secret("password", required=False),
        lease_timeout=lease_timeout,
    )
    section.finish()
    return settings


#: The shortest [gateway] retention (see gateway/ops/retention.py: returns may come months later).
MINIMUM_RETENTION_DAYS = 90


def _retention(section: Section) -> float | None:
    """``retention = "400d"``: how long filed flows are kept; absent or "off": for ever."""
    value = section.raw("retention")
    if value is None or value == "off":
        return None
    seconds = section.duration("retention", "0s")
    if seconds < MINIMUM_RETENTION_DAYS * 86400:
        raise SettingsError(
            section.key("retention"),
            f"at least {MINIMUM_RETENTION_DAYS}d (return flows may still name younger flows), "
            'or "off"',
        )
    return seconds


def as2_receiver_settings(section: Section | None) -> As2ReceiverSettings | None:
    if section is None:
        return None
    host, port = _address(
        section, "listen", section.string("listen", required=True), "0.0.0.0:4080"
    )
    tls_certificate = section.path("tls_certificate", required=False)
    tls_key = section.path("tls_key", required=False)
    if (tls_certificate is None) != (tls_key is None):
        raise SettingsError(section.key("tls_key"), "give both tls_certificate and tls_key")
    section.finish()
    return As2ReceiverSettings(host, port, tls_certificate, tls_key)


def _address(section: Section, key: str, value: str, example: str) -> tuple[str, int]:
    """A "host:port" value (an IPv6 host in brackets) as (host, port)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(
            section.key(key), f'expected "host:port" such as "{example}", got {value!r}'
        )
    return host, int(port)


def alert_settings(section: Section | None) -> AlertSettings | None:
    if section is None:
        return None
    webhook_url = section.url("webhook_url", required=False)
    token = section.secret("webhook_token", required=False)
    smtp = _smtp(section.table("smtp"))
    settings = AlertSettings(
        webhook_url=webhook_url,
        webhook_token=token,
        smtp=smtp,
        rate_limit=section.duration("rate_limit", "15m"),
        failing_for=section.duration("failing_for", "30m"),
    )
    section.finish()
    if webhook_url is None and smtp is None:
        raise SettingsError(
            section.key("webhook_url"),
            "[alerts] needs webhook_url or an [alerts.smtp] table (or remove [alerts])",
        )
    return settings


def _smtp(section: Section | None) -> SmtpSettings | None:
    if section is None:
        return None
    recipients = section.raw("to")
    if isinstance(recipients, str):
        recipients = [recipients]
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and "@" in r for r in recipients)
    ):
        raise SettingsError(
            section.key("to"), 'expected e-mail addresses, e.g. to = ["ops@example.com"]'
        )
    smtp = SmtpSettings(
        host=section.string("host", "localhost"),
        port=section.integer("port", 25, minimum=1, maximum=65535),
        sender=section.string("from", required=True),
        recipients=tuple(recipients),
        starttls=section.boolean("starttls", False),
        username=section.optional_str("username"),
        password=section.secret("password", required=False),
    )
    section.finish()
    return smtp


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def web_settings(section: Section | None) -> WebSettings | None:
    if section is None:
        return None
    from gateway.web.auth import HashError, check_hash  # the hash format is the console's

    host, port = _address(
        section, "listen", section.string("listen", "127.0.0.1:9480"), "127.0.0.1:9480"
    )
    certificate = section.path("certificate", required=False)
    key = section.path("key", required=False)
    if (certificate is None) != (key is None):
        raise SettingsError(section.key("key"), "give both certificate and key (or neither)")
    public_read = section.boolean("public_read", False)
    users: dict[str, str] = {}
    users_section = section.table("users") or Section({}, section.key("users"))
    for name in users_section.keys():  # noqa: SIM118 - a Section is not a dict
        user = users_section.table(name)
        assert user is not None  # a key it has
        password_hash = user.string("password_hash", required=True)
        try:
            check_hash(password_hash)
        except HashError as exc:
            raise SettingsError(
                user.key("password_hash"), f"{exc}; make one with raccord web-passwd"
            ) from None
        user.finish()
        users[name] = password_hash
    users_section.finish()
    section.finish()
    return WebSettings(host, port, certificate, key, public_read, users)


def web_warnings(web: WebSettings | None) -> tuple[str, ...]:
    if web is None:
        return ()
    warnings = []
    if web.host not in _LOOPBACK and not web.tls:
        warnings.append(
            f"[web] listen = {web.host}:{web.port} is reachable from other machines without "
            "TLS: passwords and session cookies would cross the network in clear; set [web] "
            "certificate and key, or listen on 127.0.0.1"
        )
    if not web.users:
        warnings.append(
            "[web] has no [web.users.<name>]: nobody can sign in"
            + ("" if web.public_read else " nor see any page")
            + " (add one with a hash from raccord web-passwd)"
        )
    return tuple(warnings)
