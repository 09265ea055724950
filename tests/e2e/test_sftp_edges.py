"""SFTP at its edges, against a real OpenSSH sshd: a link that is slow, stalls or is cut (a
loopback proxy between raccord and sshd), passphrase-protected keys made by ssh-keygen, and a
partner's disk that is full or read-only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.cli.commands import main as cli
from gateway.folders import Layout
from protocols.errors import AuthenticationError, RemoteBusy, TransferError, TransferTimeout
from protocols.settings import Secret
from protocols.sftp.sender import ABORT_PATIENCE, SftpSender, SftpSettings
from tests.conftest import sample
from tests.e2e.conftest import write_sftp_config
from tests.e2e.proxy import FaultProxy
from tests.e2e.sshd import Sshd
from tests.e2e.test_sftp import outbound
from tests.gateway.harness import drop, filed, rows, running, until

pytestmark = pytest.mark.e2e


def padded(number: str, size: int) -> bytes:
    """An invoice of exactly ``size`` bytes (a comment fills it)."""
    data = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())
    filler = size - len(data) - len(b"<!---->")
    return data.replace(b"</Invoice>", b"<!--" + b"x" * filler + b"--></Invoice>")


def via_proxy(tmp_path: Path, sshd: Sshd, proxy: FaultProxy, timeout: str) -> Path:
    """A configuration whose connection reaches ``sshd`` through ``proxy``."""
    public = Path(f"{sshd.host_key}.pub").read_text().split()
    known_hosts = tmp_path / "proxy_known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {public[0]} {public[1]}\n")
    path = write_sftp_config(tmp_path, sshd, attempts=3, known_hosts=known_hosts)
    text = path.read_text().replace(f"port = {sshd.port}\n", f"port = {proxy.port}\n")
    path.write_text(text.replace('timeout = "10s"', f'timeout = "{timeout}"'))
    return path


def settings_of(path: Path) -> SftpSettings:
    settings = config_module.load(path).connections[0].settings
    assert isinstance(settings, SftpSettings)
    return settings


# -- a slow, stalled or cut link ------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "rate"),
    [
        (180_000, 20_000),  # pipelined ONE_WRITE requests of our own
        (360_000, 40_000),  # asyncssh's put()
    ],
)
def test_a_slow_link_delivers_a_file_that_takes_far_longer_than_timeout(
    tmp_path: Path, sshd: Sshd, size: int, rate: int
) -> None:
    """timeout bounds a stall, not the whole upload: ~9 s of upload at timeout = 4 s (a 32 KB
    block is acknowledged every 0.8 to 1.6 s: a margin for a loaded machine)."""
    data = padded(f"SLOW-{size}", size)
    with FaultProxy(sshd.port, rate=rate) as proxy:
        config = config_module.load(via_proxy(tmp_path, sshd, proxy, "4s"))

        async def scenario() -> float:
            async with running(config):
                started = time.monotonic()
                drop(config, "slow.xml", data)
                await until(filed(config, 1), timeout=60, what="the slow upload")
                return time.monotonic() - started

        took = asyncio.run(scenario())
    (row,) = rows(config)
    assert (row.state, row.attempts) == ("sent", 1), row.message
    assert took > 2 * 4, f"the link was not slow enough to test anything ({took:.1f} s)"
    assert sshd.uploaded() == {row.remote_name: data}


def test_a_stalled_link_fails_after_timeout_saying_what_stalled(tmp_path: Path, sshd: Sshd) -> None:
    source = tmp_path / "big.xml"
    source.write_bytes(padded("STALL-2", 3_000_000))
    with FaultProxy(sshd.port, rate=500_000) as proxy:
        settings = settings_of(via_proxy(tmp_path, sshd, proxy, "1s"))

        async def scenario() -> tuple[float, TransferError]:
            async with SftpSender(settings) as sender:
                send = asyncio.create_task(sender.send(outbound(source, "stalled.xml")))
                await until(lambda: proxy.forwarded > 300_000, what="the upload under way")
                with proxy.stalled():
                    started = time.monotonic()
                    with pytest.raises(TransferTimeout) as caught:
                        await asyncio.wait_for(send, 30)
                    took = time.monotonic() - started
                # The link is back: the next attempt delivers the file.
                await sender.send(outbound(source, "stalled.xml"))
            return took, caught.value

        took, error = asyncio.run(scenario())
    assert took < 1 + ABORT_PATIENCE + 2, f"gave up after {took:.1f} s"
    assert error.retryable
    message = str(error)
    assert "stalled: no progress for 1 s" in message, message
    assert "of 3000000 bytes written" in message
    assert sshd.uploaded() == {"stalled.xml": source.read_bytes()}


def test_a_cut_link_is_retried_and_the_file_arrives_once(tmp_path: Path, sshd: Sshd) -> None:
    data = padded("CUT-1", 2_000_000)
    with FaultProxy(sshd.port, rate=400_000) as proxy:
        config = config_module.load(via_proxy(tmp_path, sshd, proxy, "5s"))

        async def scenario() -> None:
            async with running(config):
                drop(config, "cut.xml", data)
                await until(lambda: proxy.forwarded > 200_000, what="the upload under way")
                proxy.cut()
                await until(filed(config, 1), timeout=60, what="the flow filed")

        asyncio.run(scenario())
    (row,) = rows(config)
    assert (row.state, row.attempts) == ("sent", 2), row.message
    assert sshd.uploaded() == {row.remote_name: data}


# -- passphrase-protected keys ---------------------------------------------------------------

PASSPHRASE = "correct horse battery staple"


def protected_key(tmp_path: Path, sshd: Sshd) -> Path:
    """An OpenSSH-format ed25519 key encrypted by ssh-keygen -N (bcrypt KDF), authorised."""
    key = tmp_path / "id_protected"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-C", "test", "-f", str(key)],
        check=True,
    )
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    with (sshd.folder / "authorized_keys").open("ab") as keys:
        keys.write(Path(f"{key}.pub").read_bytes())
    return key


def with_key(path: Path, sshd: Sshd, key: Path, passphrase_line: str) -> Path:
    text = path.read_text().replace(str(sshd.client_key), str(key))
    path.write_text(text + passphrase_line + "\n")
    return path


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_passphrase_protected_key_delivers(
    tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    key = protected_key(tmp_path, sshd)
    if source == "env":
        monkeypatch.setenv("RACCORD_TEST_SFTP_PASSPHRASE", PASSPHRASE)
        line = 'passphrase = { env = "RACCORD_TEST_SFTP_PASSPHRASE" }'
    else:
        secret = tmp_path / "passphrase"
        secret.write_text(PASSPHRASE + "\n")
        line = f'passphrase = {{ file = "{secret}" }}'
    path = with_key(write_sftp_config(tmp_path, sshd), sshd, key, line)
    assert cli(["check", "--connect", "--config", str(path)]) == 0
    config = config_module.load(path)
    data = padded("KEY-1", 2_000)

    async def scenario() -> None:
        async with running(config):
            drop(config, "k.xml", data)
            await until(filed(config, 1), what="the flow filed")

    asyncio.run(scenario())
    (row,) = rows(config)
    assert row.state == "sent", row.message
    assert sshd.uploaded() == {row.remote_name: data}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('passphrase = "not the passphrase"', "cannot decrypt the private key"),
        ("", "is protected by a passphrase: set passphrase"),
    ],
)
def test_a_wrong_or_missing_passphrase_is_a_configuration_error_naming_the_key(
    tmp_path: Path, sshd: Sshd, capsys: pytest.CaptureFixture[str], line: str, words: str
) -> None:
    """raccord check, check --connect and raccord run (the daemon does not start) say which
    key and which setting; no traceback."""
    key = protected_key(tmp_path, sshd)
    path = with_key(write_sftp_config(tmp_path, sshd), sshd, key, line)
    for command in (["check"], ["check", "--connect"], ["run"]):
        assert cli([*command, "--config", str(path)]) != 0
        captured = capsys.readouterr()
        said = captured.out + captured.err
        assert "connection[qualif-sftp].sftp.passphrase: " in said and words in said, said
        assert str(key) in said and "Traceback" not in said
        assert "not the passphrase" not in said


def test_a_passphrase_changed_after_loading_fails_the_flow_naming_the_key(
    tmp_path: Path, sshd: Sshd
) -> None:
    """The key file replaced under a running daemon: an auth_failed naming the key and the
    setting, not an internal_error."""
    key = protected_key(tmp_path, sshd)
    path = with_key(write_sftp_config(tmp_path, sshd), sshd, key, f'passphrase = "{PASSPHRASE}"')
    settings = replace(settings_of(path), passphrase=Secret("stale", "literal"))
    source = tmp_path / "k.xml"
    source.write_bytes(padded("KEY-2", 2_000))

    async def scenario() -> None:
        async with SftpSender(settings) as sender:
            with pytest.raises(AuthenticationError) as refused:
                await sender.send(outbound(source, "k.xml"))
        message = str(refused.value)
        assert str(key) in message and "passphrase" in message, message

    asyncio.run(scenario())
    assert sshd.uploaded() == {}


# -- the partner's disk is full or read-only --------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` (skips the test where mounting is not allowed)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ("size=64k", 300_000),  # full: ENOSPC, which sftp-server answers "Failure"
        ("ro,size=64k", 2_000),  # read-only: EROFS, "Failure" too
    ],
)
def test_a_full_or_read_only_partner_disk_says_what_to_check(
    tmp_path: Path, sshd: Sshd, options: str, size: int
) -> None:
    with tmpfs(tmp_path / "disk", options) as disk:
        path = write_sftp_config(tmp_path, sshd, attempts=2)
        path.write_text(path.read_text().replace(str(sshd.upload_dir), str(disk)))
        config = config_module.load(path)

        async def scenario() -> None:
            async with running(config):
                drop(config, "f.xml", padded("DISK-1", size))
                await until(filed(config, 1), what="the flow filed")

        asyncio.run(scenario())
    (row,) = rows(config)
    assert (row.state, row.reason, row.attempts) == ("error", "remote_busy", 2)
    error = Layout(config.gateway.data_dir).error("qualif-sftp") / "f.xml.error.json"
    message = json.loads(error.read_text())["message"]
    assert "says only 'Failure'" in message, message
    assert "disk is full" in message and "read-only" in message and "quota" in message
    assert str(disk) in message


def test_the_message_of_a_failure_on_a_sender_is_retryable(tmp_path: Path, sshd: Sshd) -> None:
    """The same, straight from the sender: a retryable RemoteBusy (the disk may be freed)."""
    with tmpfs(tmp_path / "disk", "ro,size=64k") as disk:
        path = write_sftp_config(tmp_path, sshd)
        path.write_text(path.read_text().replace(str(sshd.upload_dir), str(disk)))
        source = tmp_path / "f.xml"
        source.write_bytes(padded("DISK-2", 2_000))

        async def scenario() -> None:
            async with SftpSender(settings_of(path)) as sender:
                with pytest.raises(RemoteBusy) as busy:
                    await sender.send(outbound(source, "f.xml"))
            assert busy.value.retryable and "read-only" in str(busy.value)

        asyncio.run(scenario())


def test_a_key_file_gone_under_a_running_daemon_fails_at_once_naming_it(
    tmp_path: Path, sshd: Sshd
) -> None:
    """Not "connect on …: No such file or directory", retried as if the network were down: a
    permanent error naming the key file and the setting to fix."""
    gone = tmp_path / "gone_key"
    settings = replace(settings_of(write_sftp_config(tmp_path, sshd)), private_key=gone)
    source = tmp_path / "g.xml"
    source.write_bytes(padded("KEY-3", 2_000))

    async def scenario() -> str:
        async with SftpSender(settings) as sender:
            with pytest.raises(TransferError) as refused:
                await sender.send(outbound(source, "g.xml"))
        assert not refused.value.retryable
        return str(refused.value)

    said = asyncio.run(scenario())
    assert f"private key {gone}" in said and "private_key" in said, said
