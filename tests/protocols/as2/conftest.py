"""Two AS2 parties with fresh keys: us (MYCOMPANY) and the partner (CTAIFEP)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway import pki
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair


@pytest.fixture(scope="session")
def our_keys() -> KeyPair:
    return pki.issue("MYCOMPANY AS2")


@pytest.fixture(scope="session")
def partner_keys() -> KeyPair:
    return pki.issue("CTAIFEP AS2")


@pytest.fixture
def as2_settings(our_keys: KeyPair, partner_keys: KeyPair) -> As2Settings:
    """Our side of the connection, as [connection.as2] would give it (files not needed)."""
    return As2Settings(
        url="http://127.0.0.1:1/",
        as2_from="MYCOMPANY",
        as2_to="CTAIFEP",
        keys=our_keys,
        partner_chain=(partner_keys.certificate,),
        partner_trust=(),
        key_path=Path("our.key"),
        partner_certificate_path=Path("partner.crt"),
        message_id_domain="raccord.test",
    )


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
