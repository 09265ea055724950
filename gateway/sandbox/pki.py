"""A tiny certificate authority for the demo and the simulator: RSA keys and X.509 certificates.

Real connections use the certificates a real authority issued; this only makes stand-ins that
behave the same (a root, certificates it issues, any validity window), written in the forms
operators receive (PEM, DER, PKCS#7, PKCS#12).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

from protocols.certs import KeyPair, to_pem


def issue(
    common_name: str,
    issuer: KeyPair | None = None,
    *,
    valid_from: datetime | None = None,
    days: int = 365,
    ca: bool = False,
    key_size: int = 2048,
    dns_names: Sequence[str] = (),
) -> KeyPair:
    """A new key and its certificate, signed by ``issuer`` (self-signed without one);
    ``dns_names`` go in its subject alternative names (a TLS server's host names)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raccord demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    start = valid_from or datetime.now(UTC) - timedelta(minutes=5)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
    builder = builder.add_extension(usage, critical=True)
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
            critical=False,
        )
    certificate = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    chain = (issuer.certificate, *issuer.chain) if issuer else ()
    return KeyPair(key, certificate, chain)


def write_key(pair: KeyPair, path: Path, password: str | None = None) -> Path:
    """The private key alone, PEM (PKCS#8), encrypted when a password is given."""
    protection: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection
        )
    )
    path.chmod(0o600)
    return path


def write_certificates(certificates: Sequence[x509.Certificate], path: Path, form: str) -> Path:
    """Certificates as ``pem`` (concatenated), ``der`` (the first only), ``p7b`` (PKCS#7, PEM)
    or ``p7b-der``."""
    if form == "pem":
        path.write_bytes(to_pem(certificates))
    elif form == "der":
        path.write_bytes(certificates[0].public_bytes(serialization.Encoding.DER))
    elif form in ("p7b", "p7b-der"):
        encoding = serialization.Encoding.PEM if form == "p7b" else serialization.Encoding.DER
        path.write_bytes(pkcs7.serialize_certificates(list(certificates), encoding))
    else:
        raise ValueError(f"unknown certificate form {form!r}")
    return path


def write_pkcs12(pair: KeyPair, path: Path, password: str) -> Path:
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"raccord",
            pair.key,  # type: ignore[arg-type]
            pair.certificate,
            list(pair.chain) or None,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    path.chmod(0o600)
    return path
