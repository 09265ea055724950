from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import commands as cli
from tests.e2e.sshd import SSHD, Sshd


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not SSHD.exists():
        message = (
            "OpenSSH sshd is not installed (Debian package openssh-server); "
            "scripts/install-and-test installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = Sshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


SFTP_CONFIG = """\
[gateway]
data_dir = "{data_dir}"
rescan_interval = "2s"
settle_time = "500ms"
shutdown_grace = "5s"
retry = {{ max_attempts = {attempts}, initial = "200ms", max = "1s" }}

[[connection]]
name = "qualif-sftp"
environment = "qualification"
protocol = "sftp"
partner_code = "VFE056"
valid_from = 2017-06-21
valid_to = 2099-06-30
{connection_extra}

[connection.interfaces]
FSO1100A = "{mode}"
FSO1106A = "partial"
FSO1117A = "partial"

[connection.sftp]
host = "127.0.0.1"
port = {port}
username = "{username}"
private_key = "{key}"
known_hosts = "{known_hosts}"
upload_dir = "{upload_dir}"
connect_timeout = "3s"
timeout = "10s"
{sftp_extra}
"""


def write_sftp_config(
    tmp_path: Path,
    server: Sshd,
    attempts: int = 8,
    known_hosts: Path | None = None,
    *,
    mode: str = "complete",
    connection_extra: str = "",
    sftp_extra: str = "",
) -> Path:
    path = tmp_path / "raccord.toml"
    path.write_text(
        SFTP_CONFIG.format(
            data_dir=tmp_path / "data",
            port=server.port,
            username=server.username,
            key=server.client_key,
            known_hosts=known_hosts or server.known_hosts,
            upload_dir=server.upload_dir,
            attempts=attempts,
            mode=mode,
            connection_extra=connection_extra,
            sftp_extra=sftp_extra,
        )
    )
    return path


def check_connect(path: Path) -> tuple[int, str]:
    """``raccord check --connect --config path``: its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["check", "--connect", "--config", str(path)])
    return code, out.getvalue()
