"""Reading keys and certificates in every form operators are handed, and judging chains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.sandbox import pki
from protocols import certs
from protocols.certs import KeyPair

Authority = tuple[KeyPair, KeyPair, KeyPair]
"""A root, an intermediate it signed and a leaf the intermediate signed."""


@pytest.fixture(scope="module")
def authority() -> Authority:
    root = pki.issue("Root CA", ca=True, days=3650)
    intermediate = pki.issue("Issuing CA", root, ca=True, days=1825)
    leaf = pki.issue("partner.example", intermediate)
    return root, intermediate, leaf


@pytest.mark.parametrize("form", ["pem", "p7b", "p7b-der"])
def test_a_chain_reads_back_in_every_bundle_form(
    tmp_path: Path, authority: Authority, form: str
) -> None:
    root, intermediate, leaf = authority
    chain = [leaf.certificate, intermediate.certificate, root.certificate]
    path = pki.write_certificates(chain, tmp_path / f"chain.{form}", form)

    loaded = certs.load_certificates(path)

    # PKCS#7 holds a SET of certificates: DER sorts it, so only PEM keeps the file order.
    assert sorted(loaded, key=certs.name) == sorted(chain, key=certs.name)
    if form == "pem":
        assert loaded == chain
    assert certs.order_chain(loaded) == chain
    assert certs.chain_problems(certs.order_chain(loaded)) == []


def test_a_der_certificate_and_a_pkcs12_file_read_back(
    tmp_path: Path, authority: Authority
) -> None:
    _, intermediate, leaf = authority
    der = pki.write_certificates([leaf.certificate], tmp_path / "leaf.cer", "der")
    p12 = pki.write_pkcs12(leaf, tmp_path / "leaf.p12", "s3cret")

    assert certs.load_certificates(der) == [leaf.certificate]
    assert certs.load_certificates(p12, "s3cret")[0] == leaf.certificate
    pair = certs.load_key_pair(p12, None, "s3cret")
    assert pair.certificate == leaf.certificate
    assert pair.chain[0] == intermediate.certificate


def test_a_key_and_its_certificate_are_paired_and_a_stranger_is_refused(
    tmp_path: Path,
    authority: Authority,
) -> None:
    _, _, leaf = authority
    other = pki.issue("someone else")
    key = pki.write_key(leaf, tmp_path / "our.key", password="pw")
    cert = pki.write_certificates([leaf.certificate], tmp_path / "our.crt", "pem")
    stranger = pki.write_certificates([other.certificate], tmp_path / "other.crt", "pem")

    assert certs.load_key_pair(key, cert, "pw").certificate == leaf.certificate
    with pytest.raises(certs.CertificateProblem, match="no certificate in it matches"):
        certs.load_key_pair(key, stranger, "pw")
    with pytest.raises(certs.CertificateProblem, match="encrypted: give its password"):
        certs.load_key_pair(key, cert, None)
    with pytest.raises(certs.CertificateProblem, match="password"):
        certs.load_key_pair(key, cert, "wrong")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.p7b"
    garbage.write_bytes(b"not a certificate at all\n")

    with pytest.raises(certs.CertificateProblem, match=r"empty\.pem is empty"):
        certs.load_certificates(empty)
    with pytest.raises(certs.CertificateProblem, match=r"garbage\.p7b: no certificate found"):
        certs.load_certificates(garbage)
    with pytest.raises(certs.CertificateProblem, match="cannot read"):
        certs.load_certificates(tmp_path / "missing.pem")


def test_chain_problems_name_disorder_gaps_strangers_and_expiry(authority: Authority) -> None:
    root, intermediate, leaf = authority
    stranger = pki.issue("stranger")

    assert (
        "not in order"
        in certs.chain_problems([intermediate.certificate, leaf.certificate, root.certificate])[0]
    )
    gap = certs.chain_problems([leaf.certificate, intermediate.certificate])
    assert gap == [
        "chain incomplete: the issuer of CN=Issuing CA,O=raccord demo "
        "(CN=Root CA,O=raccord demo) is missing"
    ]
    extra = certs.chain_problems(
        [leaf.certificate, intermediate.certificate, root.certificate, stranger.certificate]
    )
    assert extra == ["certificates that do not belong to the chain: CN=stranger,O=raccord demo"]
    later = datetime.now(UTC) + timedelta(days=400)
    full = [leaf.certificate, intermediate.certificate, root.certificate]
    expiry = f"{leaf.certificate.not_valid_after_utc:%Y-%m-%d}"
    assert certs.chain_problems(full, now=later) == [
        f"CN=partner.example,O=raccord demo expired on {expiry}"
    ]


def test_trusted_roots_decide_when_given(authority: Authority) -> None:
    root, intermediate, leaf = authority
    other_root = pki.issue("Other Root", ca=True)

    assert (
        certs.chain_problems([leaf.certificate, intermediate.certificate], [root.certificate]) == []
    )
    assert certs.chain_problems(
        [leaf.certificate, intermediate.certificate], [other_root.certificate]
    ) == ["the chain of CN=partner.example,O=raccord demo does not lead to a trusted root"]
