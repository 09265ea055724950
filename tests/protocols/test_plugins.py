"""Protocol plugins: the README's example (examples/raccord-folder) installed with pip like any
distribution, found through its ``raccord.protocols`` entry point by ``raccord check`` and used
by ``raccord run`` to deliver a file; a misspelt protocol gets a "did you mean"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sample
from tests.e2e.daemon import daemon
from tests.gateway.harness import connection_toml

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "raccord-folder"

GATEWAY = """\
[gateway]
data_dir = "{data_dir}"
rescan_interval = "1s"
settle_time = "200ms"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, built and installed by pip into a folder of its own."""
    target = tmp_path_factory.mktemp("plugin-site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert list(target.glob("raccord_folder-1.0.0.dist-info/entry_points.txt"))
    return target


def raccord(site: Path | None, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    process: subprocess.Popen[str] = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )
    return process


def write_config(tmp_path: Path, protocol: str = "folder") -> tuple[Path, Path]:
    target = tmp_path / "transfer-out"
    target.mkdir(exist_ok=True)
    path = tmp_path / "raccord.toml"
    path.write_text(
        GATEWAY.format(data_dir=tmp_path / "data")
        + connection_toml(
            "qualif-folder",
            protocol,
            {"path": target},
            partner_code="VFE056",
            interfaces={"FSO1100A": "complete"},
        )
    )
    return path, target


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_check_finds_the_installed_plugin_and_connects(tmp_path: Path, site: Path) -> None:
    path, target = write_config(tmp_path)
    status, out, err = finished(raccord(site, "check", "--connect", "--config", str(path)))
    assert status == 0, err
    assert "qualif-folder: folder qualification, usable" in out
    assert f"connect: ok — folder {target} (writable)" in out


def test_run_delivers_through_the_plugin(tmp_path: Path, site: Path) -> None:
    path, target = write_config(tmp_path)
    with daemon(path, tmp_path / "daemon.log", pythonpath=site) as running:
        outbox = tmp_path / "data" / "outbox" / "qualif-folder"
        (outbox / ".invoice.xml.part").write_bytes(sample("ubl-invoice.xml"))
        (outbox / ".invoice.xml.part").rename(outbox / "invoice.xml")
        running.logged("flow.sent")
        [sending] = running.events("flow.sending")
        status, _ = running.stop()
    assert status == 0
    assert sending["protocol"] == "folder"
    [delivered] = list(target.iterdir())
    assert delivered.name.startswith("FSO1100A_VFE056_") and delivered.suffix == ".xml"
    assert delivered.read_bytes() == sample("ubl-invoice.xml")


def test_a_misspelt_protocol_names_the_plugin(tmp_path: Path, site: Path) -> None:
    path, _ = write_config(tmp_path, protocol="foldr")
    status, _, err = finished(raccord(site, "check", "--config", str(path)))
    assert status == 2
    assert "connection[qualif-folder].protocol: unknown protocol 'foldr'; did you mean " in err
    assert "'folder'?" in err
    assert "known protocols: as2, folder, memory, pesit, pesit-cft, piste, sftp" in err


def test_without_the_plugin_its_protocol_is_unknown(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path)
    status, _, err = finished(raccord(None, "check", "--config", str(path)))
    assert status == 2
    assert (
        "unknown protocol 'folder'" in err
        and "known protocols: as2, memory, pesit, pesit-cft, piste, sftp" in err
    )
