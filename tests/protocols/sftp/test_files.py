"""An SFTP connection's local files: the sender refuses to connect without them (the
operator's to fix, not a network failure to retry), naming the file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import CertificateError, HostKeyError
from protocols.settings import Section
from protocols.sftp import files
from protocols.sftp.sender import SftpSender, parse_settings


def sftp_settings(tmp_path: Path, **values: str) -> object:
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
    sender = SftpSender(sftp_settings(tmp_path), own_process=False)  # type: ignore[arg-type]
    with pytest.raises(CertificateError) as caught:
        asyncio.run(sender.check())
    assert not caught.value.retryable
    assert f"private key {tmp_path / 'id'} does not exist" in str(caught.value)


def test_a_missing_known_hosts_is_a_final_error_naming_the_file(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "id").write_bytes(key.export_private_key())
    sender = SftpSender(sftp_settings(tmp_path), own_process=False)  # type: ignore[arg-type]
    with pytest.raises(HostKeyError) as caught:
        asyncio.run(sender.check())
    assert not caught.value.retryable
    assert f"known_hosts file {tmp_path / 'known_hosts'} does not exist" in str(caught.value)


@given(st.binary(max_size=300))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_key_or_known_hosts_bytes_give_a_sentence_or_pass(
    tmp_path: Path, content: bytes
) -> None:
    """raccord check reads files an operator wrote: whatever they hold, the answer is a
    sentence naming the file (or nothing wrong), never an exception."""
    path = tmp_path / "file"
    path.write_bytes(content)
    for problem in (
        files.key_problem(path, None),
        files.known_hosts_problem(path, "127.0.0.1", 6321),
    ):
        assert problem is None or str(path) in problem
