"""Reading [connection.as2]: what is refused, and the right-hand side of our Message-IDs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.config import ConfigError
from protocols.as2 import settings
from protocols.certs import KeyPair
from tests.as2_config import write_as2_config


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("gw-1.example.org", "gw-1.example.org"),
        ("localhost", "localhost"),
        ("my_host.local", "raccord.invalid"),  # "_" is no host-name character
        ("-bad.example", "raccord.invalid"),
        ("", "raccord.invalid"),
    ],
)
def test_the_message_id_domain_defaults_to_a_usable_host_name(
    monkeypatch: pytest.MonkeyPatch, host: str, expected: str
) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: host)  # the module settings uses

    assert settings._domain() == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('mdn = "async-signed"', "needs mdn_url"),
        ('mdn = "async"\nmdn_url = "http://127.0.0.1:4080/"', "needs an [as2_receiver] section"),
        ('mdn = "sync-signed"\nsignature = "none"', "asks for a signed MDN"),
        ('mdn = "async"\nmdn_url = "gateway:4080"', "mdn_url: expected an http:// or https:// URL"),
        ('http_user = "me"', "give both http_user and http_password"),
        ('encryption = "aes_512"', "'aes_512' is not one of"),
        ('subject = "raccord {interfac}"', "unknown placeholder {interfac}"),
    ],
)
def test_inconsistent_settings_are_refused_with_the_key_named(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"connection\[qualif-as2\]\.as2\.") as refused:
        write_as2_config(tmp_path, our_keys, partner_keys, as2_extra=extra)

    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ('ca_bundle = "{missing}"', "ca_bundle", "cannot use CA bundle"),
        ('client_certificate = "{garbage}"', "client_certificate", "cannot use TLS client"),
    ],
)
def test_unusable_tls_files_are_a_configuration_error(
    tmp_path: Path,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    extra: str,
    key: str,
    message: str,
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    extra = extra.format(missing=tmp_path / "missing.pem", garbage=garbage)
    with pytest.raises(ConfigError, match=rf"connection\[qualif-as2\]\.as2\.{key}") as refused:
        write_as2_config(
            tmp_path, our_keys, partner_keys, url="https://127.0.0.1:9/", as2_extra=extra
        )

    assert message in str(refused.value)
