"""``[connection.as2]``: the partner's endpoint and identifiers, our keys, the security asked.

Key material is read and paired when the configuration is read, so ``raccord check`` names an
unreadable file or a key that does not match its certificate; expiry is judged when a flow is
sent (an expired certificate blocks the connection with a clear error, the daemon still runs).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from protocols import certs
from protocols.settings import Secret, Section, SettingsError

#: Our names for the symmetric ciphers, and pyas2lib's.
ENCRYPTIONS = {
    "aes_256_cbc": "aes_256_cbc",
    "aes_192_cbc": "aes_192_cbc",
    "aes_128_cbc": "aes_128_cbc",
    "tripledes": "tripledes_192_cbc",
    "none": "",
}
_HOST_NAME = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
SIGNATURES = ("sha256", "sha384", "sha512", "sha1", "none")
SUBJECT_FIELDS = ("interface", "file")  # the interface code, the remote name
MDN_MODES = ("sync-signed", "sync", "async-signed", "async", "none")


@dataclass(frozen=True)
class As2Settings:
    url: str
    as2_from: str
    as2_to: str
    keys: certs.KeyPair
    partner_chain: tuple[x509.Certificate, ...]  # leaf first
    partner_trust: tuple[x509.Certificate, ...]  # roots the chain must lead to; () = its own
    key_path: Path
    partner_certificate_path: Path
    encryption: str = "aes_256_cbc"
    signature: str = "sha256"
    compress: bool = False
    mdn: str = "sync-signed"
    mdn_url: str | None = None
    async_mdn_wait: float = 3600.0
    subject: str = "raccord {interface}"
    #: application/octet-stream travels as binary MIME: the partner gets the very bytes. Any
    #: other type travels as MIME text, whose canonical form has CRLF line ends.
    content_type: str = "application/octet-stream"
    message_id_domain: str = "raccord.invalid"
    http_user: str | None = None
    http_password: Secret | None = None
    ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    #: Where our certificate and the partner's CAs were read (None: in the key file; none).
    certificate_path: Path | None = None
    partner_ca_path: Path | None = None
    connect_timeout: float = 15.0
    timeout: float = 300.0

    @property
    def partner_certificate(self) -> x509.Certificate:
        return self.partner_chain[0]

    @property
    def mdn_signed(self) -> bool:
        return self.mdn.endswith("-signed")

    @property
    def mdn_async(self) -> bool:
        return self.mdn.startswith("async")


def parse_settings(section: Section) -> As2Settings:
    url = section.url("url")
    assert url is not None  # required
    key_path = section.path("key")
    assert key_path is not None
    certificate_path = section.path("certificate", required=False)
    password = section.secret("key_password", required=False)
    partner_path = section.path("partner_certificate")
    assert partner_path is not None
    trust_path = section.path("partner_ca", required=False)
    try:
        keys = certs.load_key_pair(key_path, certificate_path, password.value if password else None)
    except certs.CertificateProblem as exc:
        raise SettingsError(section.key("key"), str(exc)) from None
    try:
        partner = certs.order_chain(certs.load_certificates(partner_path))
    except certs.CertificateProblem as exc:
        raise SettingsError(section.key("partner_certificate"), str(exc)) from None
    try:
        trust = certs.load_certificates(trust_path) if trust_path else []
    except certs.CertificateProblem as exc:
        raise SettingsError(section.key("partner_ca"), str(exc)) from None
    mdn = section.choice("mdn", MDN_MODES, "sync-signed")
    mdn_url = section.url("mdn_url", required=False)
    if mdn.startswith("async") and not mdn_url:
        raise SettingsError(
            section.key("mdn_url"),
            f'mdn = "{mdn}" needs mdn_url: the address of our [as2_receiver] as the partner '
            "reaches it, where it posts the MDN",
        )
    http_user = section.optional_str("http_user")
    http_password = section.secret("http_password", required=False)
    if (http_user is None) != (http_password is None):
        raise SettingsError(section.key("http_password"), "give both http_user and http_password")
    client_certificate = section.path("client_certificate", required=False)
    client_key = section.path("client_key", required=False)
    if client_key is not None and client_certificate is None:
        raise SettingsError(section.key("client_certificate"), "client_key needs its certificate")
    settings = As2Settings(
        url=url,
        as2_from=section.string("as2_from", required=True),
        as2_to=section.string("as2_to", required=True),
        keys=keys,
        partner_chain=tuple(partner),
        partner_trust=tuple(trust),
        key_path=key_path,
        partner_certificate_path=partner_path,
        encryption=section.choice("encryption", ENCRYPTIONS, "aes_256_cbc"),
        signature=section.choice("signature", SIGNATURES, "sha256"),
        compress=section.boolean("compress", False),
        mdn=mdn,
        mdn_url=mdn_url,
        async_mdn_wait=section.duration("async_mdn_wait", "1h"),
        subject=section.template("subject", "raccord {interface}", SUBJECT_FIELDS),
        content_type=section.string("content_type", "application/octet-stream"),
        message_id_domain=section.string("message_id_domain", _domain()),
        http_user=http_user,
        http_password=http_password,
        ca_bundle=section.path("ca_bundle", required=False),
        client_certificate=client_certificate,
        client_key=client_key,
        certificate_path=certificate_path,
        partner_ca_path=trust_path,
        connect_timeout=section.duration("connect_timeout", "15s"),
        timeout=section.duration("timeout", "300s"),
    )
    problem = url.startswith("https:") and certs.tls_problem(
        settings.ca_bundle, client_certificate, client_key
    )
    if problem:
        raise SettingsError(section.key(problem[0]), problem[1])
    for name in ("as2_from", "as2_to"):
        value = getattr(settings, name)
        if not value or len(value) > 128 or not value.isprintable():
            raise SettingsError(section.key(name), "an AS2 name is 1 to 128 printable characters")
    if settings.mdn_signed and settings.signature == "none":
        # The MDN's signature is asked with the message's digest algorithm.
        raise SettingsError(
            section.key("mdn"),
            f'mdn = "{mdn}" asks for a signed MDN with our signature algorithm: set signature',
        )
    section.finish()
    return settings


def _domain() -> str:
    """The right-hand side of our Message-IDs: this host's name, if it is a usable one."""
    name = socket.getfqdn()
    return name if _HOST_NAME.match(name) else "raccord.invalid"
