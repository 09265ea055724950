"""``raccord check`` proves what can be proved without the network: a configuration whose files,
folders or addresses cannot work is exit 1, each problem one sentence naming key and file."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest

from gateway.cli import preflight
from gateway.sandbox import pki
from protocols.certs import KeyPair
from tests.as2_config import write_as2_config
from tests.e2e.sshd import free_port
from tests.gateway.harness import memory_config, raccord_cli, running

EXAMPLE = Path(__file__).parents[3] / "config" / "raccord.example.toml"


def checked(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """Exit status, stdout, and the stderr lines of ``raccord check``; never a traceback."""
    status, out, err = raccord_cli(capsys, "check", "--config", str(path))
    return status, out, err.splitlines()


def sftp_config(tmp_path: Path, *, key: bytes | None = None, hosts_for: str = "127.0.0.1") -> Path:
    """The example configuration with a real key, known_hosts and data_dir under tmp_path."""
    keys = tmp_path / "keys"
    keys.mkdir()
    private = asyncssh.generate_private_key("ssh-ed25519")
    (keys / "id_ed25519").write_bytes(key if key is not None else private.export_private_key())
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    (keys / "known_hosts").write_text(f"[{hosts_for}]:6321 {host_key}")
    path = tmp_path / "raccord.toml"
    path.write_text(
        EXAMPLE.read_text()
        .replace("/etc/raccord/keys/id_ed25519", str(keys / "id_ed25519"))
        .replace("/etc/raccord/known_hosts", str(keys / "known_hosts"))
        .replace("/var/lib/raccord", str(tmp_path / "data"))
    )
    return path


def test_a_configuration_whose_files_exist_and_parse_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = checked(sftp_config(tmp_path), capsys)
    assert (status, err) == (0, [])
    assert "configuration is valid (1 connection(s))" in out
    assert "qualif-sftp: sftp qualification, usable" in out


def test_the_unedited_example_cannot_work_and_says_which_files_are_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if Path("/etc/raccord/keys/id_ed25519").exists():
        pytest.skip("this machine has the example's key")
    status, out, err = checked(EXAMPLE, capsys)
    assert status == 1
    assert (
        f"raccord: {EXAMPLE}: connection[qualif-sftp].sftp.private_key: private key "
        "/etc/raccord/keys/id_ed25519 does not exist"
    ) in err
    assert any(
        "connection[qualif-sftp].sftp.known_hosts: known_hosts file /etc/raccord/known_hosts "
        "does not exist" in line
        for line in err
    )
    assert "qualif-sftp: sftp qualification, not usable: private key" in out


def test_a_garbage_private_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = checked(sftp_config(tmp_path, key=b"not a key\n"), capsys)
    assert status == 1
    [line] = err
    assert "sftp.private_key: private key " in line
    assert str(tmp_path / "keys" / "id_ed25519") in line
    assert "is not a usable SSH private key" in line


def test_known_hosts_without_the_host_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = checked(sftp_config(tmp_path, hosts_for="10.9.9.9"), capsys)
    assert status == 1
    [line] = err
    assert f"known_hosts file {tmp_path / 'keys' / 'known_hosts'} holds no key for " in line
    assert "[127.0.0.1]:6321" in line


def test_a_data_dir_that_cannot_be_created_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sftp_config(tmp_path)
    (tmp_path / "plain-file").write_text("")
    path.write_text(
        path.read_text().replace(str(tmp_path / "data"), str(tmp_path / "plain-file/d"))
    )
    status, _, err = checked(path, capsys)
    assert status == 1
    [line] = err
    assert "gateway.data_dir: data_dir " in line and "plain-file is not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_data_dir_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sftp_config(tmp_path)
    (tmp_path / "data").mkdir(mode=0o500)
    status, _, err = checked(path, capsys)
    assert status == 1
    assert "is not writable by this user" in err[0]


def test_an_expired_certificate_names_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], partner_keys: KeyPair
) -> None:
    past = datetime.now(UTC) - timedelta(days=400)
    ours = pki.issue("MYCOMPANY old", valid_from=past, days=30)
    config = write_as2_config(tmp_path, ours, partner_keys)
    status, _, err = checked(config.path, capsys)
    assert status == 1
    [line] = err
    assert "connection[qualif-as2].as2.certificate: qualif-as2: ours certificate" in line
    assert f"in {tmp_path / 'keys' / 'our.crt'} expired on " in line


def test_a_listen_address_held_by_another_program_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sftp_config(tmp_path)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        path.write_text(
            path.read_text().replace(
                '# metrics = "127.0.0.1:9464"', f'metrics = "127.0.0.1:{port}"'
            )
        )
        status, _, err = checked(path, capsys)
    assert status == 1
    [line] = err
    assert f"gateway.metrics: 127.0.0.1:{port} is already in use by another program" in line
    status, _, err = checked(path, capsys)  # freed
    assert (status, err) == (0, [])


def test_the_address_of_the_running_daemon_is_no_problem(tmp_path: Path) -> None:
    """During a reload (ExecReload runs check), the daemon itself holds its addresses."""
    config = memory_config(
        tmp_path,
        "check-running",
        gateway_extra=f'metrics = "127.0.0.1:{free_port()}"',
    )

    async def main() -> list[preflight.Problem]:
        async with running(config):
            return await asyncio.to_thread(preflight.listen_problems, config)

    assert asyncio.run(main()) == []
