"""The systemd unit, checked by systemd's own tools: ``systemd-analyze verify`` finds no error,
``systemd-analyze security`` rates its exposure at most 2.0 ("OK"), and it declares what the
daemon relies on (notify, watchdog, restart, its own user and folders)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "raccord.service"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing (Debian package systemd; .ci/run installs it)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)


def test_systemd_rates_the_unit_ok() -> None:
    done = analyze("security", "--offline=true", str(UNIT))
    found = re.search(r"Overall exposure level for raccord\.service: ([\d.]+) (\w+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0 and found.group(2) == "OK", done.stdout


def test_systemd_finds_no_error_in_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's raccord
    raccord = Path(sys.executable).with_name("raccord")
    assert raccord.exists(), "raccord is not installed in this environment"
    unit = tmp_path / "raccord.service"
    unit.write_text(UNIT.read_text().replace("/opt/raccord/venv/bin/raccord", str(raccord)))
    done = analyze("verify", str(unit))
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_the_unit_declares_what_the_daemon_relies_on() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    service = parser["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30s"
    # A reload proves the configuration first (a failing check fails `systemctl reload`),
    # then signals: raccord run reloads on SIGHUP.
    reloads = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecReload=")]
    assert reloads == [
        "ExecReload=/opt/raccord/venv/bin/raccord check",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "raccord" and service["StateDirectory"] == "raccord"
    assert service["ConfigurationDirectory"] == "raccord"


def test_the_documentation_the_unit_names_is_installed_by_the_install_steps() -> None:
    """Documentation= names a file that exists once installed as docs/operations.md's install
    steps say (it named a README that was never copied)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(UNIT)
    named = parser["Unit"]["Documentation"]
    assert named == "file:///opt/raccord/doc/operations.md"
    root = UNIT.parents[1]
    assert (root / "docs" / "operations.md").is_file()
    install = "install -D -m 0644 docs/operations.md /opt/raccord/doc/operations.md"
    assert install in (root / "docs" / "operations.md").read_text()
