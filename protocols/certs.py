"""Keys and certificates from the files operators are given: PEM, DER, PKCS#7 chains, PKCS#12.

Chorus Pro hands out and asks for certificates as PKCS#7 bundles (``.p7b``) holding the whole
chain; partners and internal PKIs use PEM, DER or PKCS#12. Every protocol that signs, encrypts
or speaks TLS reads its material here, so that one error message names the file at fault, and
``raccord certs`` can report on every one of them the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12


class CertificateProblem(ValueError):
    """A key or certificate file cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class KeyPair:
    """Our private key, our certificate, and the certificates that chain it to a root."""

    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def __eq__(self, other: object) -> bool:
        """The same key (private keys compare by identity: compare their public halves) and
        the same certificates — so a reload can tell an unchanged connection."""
        if not isinstance(other, KeyPair):
            return NotImplemented
        return (self.certificate, self.chain) == (other.certificate, other.chain) and (
            self.key.public_key() == other.key.public_key()
        )

    def __hash__(self) -> int:
        return hash((self.certificate, self.chain))

    def pem(self) -> bytes:
        """Key (unencrypted PKCS#8) followed by the certificate, for libraries that want both."""
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key + to_pem([self.certificate])


def tls_client_context(
    ca_bundle: Path | None, certificate: Path | None, key: Path | None
) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_bundle`` (the system's CAs without one) and
    presenting ``certificate`` (PEM, with ``key`` or with its key in the same file).

    Raises:
        CertificateProblem: a file cannot be read or used; the message names it.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateProblem(
            f"cannot use CA bundle {ca_bundle}: {_ssl_reason(exc)} (PEM certificates expected)"
        ) from None
    if certificate is not None:
        try:
            context.load_cert_chain(str(certificate), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateProblem(
                f"cannot use TLS client certificate {certificate} with key {key or certificate}: "
                f"{_ssl_reason(exc)} (PEM files expected, the key unencrypted and matching)"
            ) from None
    return context


def tls_problem(
    ca_bundle: Path | None, certificate: Path | None, key: Path | None
) -> tuple[str, str] | None:
    """``(setting, message)`` when :func:`tls_client_context` would fail on these files —
    for configuration checks, so that a bad TLS file is named by ``raccord check`` rather
    than discovered by a flow."""
    for setting, files in (
        ("ca_bundle", (ca_bundle, None, None)),
        ("client_certificate", (None, certificate, key)),
    ):
        try:
            tls_client_context(*files)
        except CertificateProblem as exc:
            return setting, str(exc)
    return None


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(exc.strerror or exc)


def to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateProblem(f"cannot read {what} {path}: {exc.strerror}") from None
    if not data.strip():
        raise CertificateProblem(f"{what} {path} is empty")
    return data


def _password(password: str | None) -> bytes | None:
    return password.encode("utf-8") if password else None


def load_certificates(path: Path, password: str | None = None) -> list[x509.Certificate]:
    """Every certificate in ``path``, in file order (PEM, DER, PKCS#7 PEM/DER, PKCS#12).

    Raises:
        CertificateProblem: unreadable, empty, or no certificate in any known form.
    """
    data = _read(path, "certificate file")
    try:
        if b"-----BEGIN PKCS7-----" in data:
            return list(pkcs7.load_pem_pkcs7_certificates(data))
        if b"-----BEGIN CERTIFICATE-----" in data:
            return list(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise CertificateProblem(f"{path}: damaged PEM certificate data ({exc})") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    try:
        return list(pkcs7.load_der_pkcs7_certificates(data))
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        bundle = pkcs12.load_pkcs12(data, _password(password))
    except (ValueError, UnsupportedAlgorithm):
        bundle = None
    if bundle is not None:
        found = [bundle.cert.certificate] if bundle.cert else []
        return found + [extra.certificate for extra in bundle.additional_certs]
    raise CertificateProblem(
        f"{path}: no certificate found (expected PEM, DER, PKCS#7 .p7b or PKCS#12)"
    )


def load_key_pair(
    key_path: Path, certificate_path: Path | None, password: str | None = None
) -> KeyPair:
    """Our key and certificate: a PKCS#12 file alone, or a key file (PEM or DER, PKCS#8 or
    traditional) with a certificate file (any form :func:`load_certificates` reads).

    Raises:
        CertificateProblem: unreadable, wrong password, or the certificate is not the key's.
    """
    data = _read(key_path, "key file")
    certificates: list[x509.Certificate] = []
    pem = b"-----BEGIN" in data
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    key: PrivateKeyTypes | None
    try:
        key = load(data, _password(password))
    except TypeError:
        raise CertificateProblem(
            f"key file {key_path} is encrypted: give its password (key_password)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if key is not None and pem and b"-----BEGIN CERTIFICATE-----" in data:
        certificates = list(x509.load_pem_x509_certificates(data))
    if key is None and not pem:
        try:
            bundle = pkcs12.load_pkcs12(data, _password(password))
        except ValueError:
            raise CertificateProblem(
                f"key file {key_path}: not a readable private key or PKCS#12 file, "
                "or the password (key_password) is wrong"
            ) from None
        key = bundle.key
        if bundle.cert is not None:
            certificates = [bundle.cert.certificate]
        certificates += [extra.certificate for extra in bundle.additional_certs]
    if key is None:
        raise CertificateProblem(
            f"key file {key_path}: not a readable private key, or the password "
            "(key_password) is wrong"
        )
    if certificate_path is not None:
        certificates = load_certificates(certificate_path, password)
    if not certificates:
        raise CertificateProblem(
            f"key file {key_path} holds no certificate: give the certificate file too"
        )
    ours = _public(key)
    leaf = next((cert for cert in certificates if _public_of(cert) == ours), None)
    if leaf is None:
        where = certificate_path or key_path
        raise CertificateProblem(f"{where}: no certificate in it matches the key in {key_path}")
    return KeyPair(key, leaf, tuple(cert for cert in certificates if cert is not leaf))


def _public(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def name(cert: x509.Certificate) -> str:
    """The subject as an operator reads it (RFC 4514)."""
    return cert.subject.rfc4514_string()


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names and signature)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def order_chain(certificates: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf first, each followed by its issuer, as far as the links go.

    The leaf is the certificate that issued none of the others; a bundle may list them in any
    order. Certificates that do not join the chain are left out (see :func:`chain_problems`).
    """
    if not certificates:
        return []
    issuers = {id(c) for c in certificates for o in certificates if o is not c and issued_by(o, c)}
    leaves = [c for c in certificates if id(c) not in issuers] or [certificates[0]]
    chain = [leaves[0]]
    while not self_signed(chain[-1]):
        parent = next((c for c in certificates if c not in chain and issued_by(chain[-1], c)), None)
        if parent is None:
            break
        chain.append(parent)
    return chain


def chain_problems(
    certificates: Sequence[x509.Certificate],
    trusted: Sequence[x509.Certificate] = (),
    *,
    now: datetime | None = None,
    dates: bool = True,
) -> list[str]:
    """What is wrong with a bundle, in sentences: order, gaps, extras, expiry (unless
    ``dates`` is false: for a caller that reports each certificate's validity itself), trust.

    With ``trusted`` roots, the chain must end at one of them (or at a certificate it signed);
    without, a chain that ends in a self-signed root or a single self-signed certificate is
    accepted as the partner's own.
    """
    when = now or datetime.now(UTC)
    problems: list[str] = []
    if not certificates:
        return ["no certificate"]
    chain = order_chain(certificates)
    if list(certificates[: len(chain)]) != chain:
        problems.append("certificates are not in order (leaf first, then each issuer)")
    extras = [c for c in certificates if c not in chain]
    if extras:
        problems.append(
            "certificates that do not belong to the chain: " + "; ".join(name(c) for c in extras)
        )
    for cert in chain if dates else ():
        if cert.not_valid_after_utc < when:
            problems.append(f"{name(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        elif cert.not_valid_before_utc > when:
            problems.append(
                f"{name(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
            )
    top = chain[-1]
    if trusted:
        anchored = any(
            _public_of(top) == _public_of(root) or issued_by(top, root) for root in trusted
        )
        if not anchored:
            problems.append(f"the chain of {name(chain[0])} does not lead to a trusted root")
    elif not self_signed(top):
        problems.append(
            f"chain incomplete: the issuer of {name(top)} "
            f"({top.issuer.rfc4514_string()}) is missing"
        )
    return problems


def expires(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc
