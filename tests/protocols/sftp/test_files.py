"""An SFTP connection's local files: the sender refuses to connect without them (the
operator's to fix, not a network failure to retry), naming the file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from protocols.errors import CertificateError, HostKeyError
from protocols.settings import Section
from protocols.sftp.sender import SftpSender, parse_settings


def settings(tmp_path: Path, **values: str) -> object:
    raw = {
        "host": "127.0.0.1",
        "port": 9,
        "username": "u",
        "private_key": str(tmp_path / "id"),
        "known_hosts": str(tmp_path / "known_hosts"),
        **values,
    }
    return parse_settings(Section(raw, "connection[x].sftp"))


def test_a_missing_private_key_is_a_final_error_naming_the_file(tmp_path: Path) -> None:
    sender = SftpSender(settings(tmp_path), own_process=False)  # type: ignore[arg-type]
    with pytest.raises(CertificateError) as caught:
        asyncio.run(sender.check())
    assert not caught.value.retryable
    assert f"private key {tmp_path / 'id'} does not exist" in str(caught.value)


def test_a_missing_known_hosts_is_a_final_error_naming_the_file(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "id").write_bytes(key.export_private_key())
    sender = SftpSender(settings(tmp_path), own_process=False)  # type: ignore[arg-type]
    with pytest.raises(HostKeyError) as caught:
        asyncio.run(sender.check())
    assert not caught.value.retryable
    assert f"known_hosts file {tmp_path / 'known_hosts'} does not exist" in str(caught.value)
