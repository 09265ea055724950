"""django-pyas2 (from PyPI, in its own virtual environment) as a real AS2 partner on 127.0.0.1.

django-pyas2 pins older pyas2lib and cryptography releases, so it never shares raccord's
environment: :func:`ensure_venv` makes ``.venv-pyas2`` beside the project once (pip from PyPI),
and every test runs it as separate processes — ``runserver`` for the endpoint, and
``pyas2_partner/partner.py`` to configure it, read its messages and send with its own command.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import protocols.as2.compat
from gateway.sandbox import pki
from protocols.certs import KeyPair, to_pem
from tests.e2e.sshd import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-pyas2"
REQUIREMENT = "django-pyas2==1.2.3"
HERE = Path(__file__).parent / "pyas2_partner"
KEY_PASSWORD = "partner-secret"


def ensure_venv() -> Path:
    """The partner's Python, installing django-pyas2 on first use (a lock keeps it single)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".raccord-ready"
    with (ROOT / ".venv-pyas2.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == REQUIREMENT:
            return python
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
            check=True,
            timeout=900,
        )
        marker.write_text(REQUIREMENT)
    return python


class DjangoPyas2:
    """One django-pyas2 instance: organization CTAIFEP, partner MYCOMPANY (raccord)."""

    def __init__(self, folder: Path, keys: KeyPair, our_certificate: KeyPair) -> None:
        self.folder = folder
        self.keys = keys
        self.python = ensure_venv()
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "PARTNER_WORK": str(folder),
            "PYTHONPATH": str(HERE),
            "DJANGO_SETTINGS_MODULE": "settings",
            "RACCORD_COMPAT": protocols.as2.compat.__file__,
            # Where partners post asynchronous MDNs: its own endpoint.
            "PARTNER_MDN_URL": self.url,
        }
        pki.write_pkcs12(keys, folder / "ctaifep.p12", KEY_PASSWORD)
        (folder / "mycompany.pem").write_bytes(to_pem([our_certificate.certificate]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pyas2/as2receive"

    def _run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [str(self.python), str(HERE / "partner.py"), *args],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"partner.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def configure(self, **spec: Any) -> None:
        """``encryption``, ``signature``, ``compress``, ``mdn_mode`` (SYNC/ASYNC/None),
        ``mdn_sign``, ``target_url``: how django-pyas2 sends to us (and what it demands)."""
        spec |= {
            "key_p12": str(self.folder / "ctaifep.p12"),
            "key_pass": KEY_PASSWORD,
            "partner_certificate": str(self.folder / "mycompany.pem"),
        }
        self._run("configure", json.dumps(spec))

    def messages(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self._run("messages"))
        return found

    def send(self, path: Path) -> None:
        """django-pyas2's own ``sendas2message`` (the file must be under the partner folder)."""
        self._run("send", str(path.relative_to(self.folder)))

    def post_async_mdns(self) -> None:
        """django-pyas2's ``manageas2server --async-mdns``: post the MDNs it owes."""
        self._run("async-mdns")

    def start(self, **env: str) -> None:
        with (self.folder / "runserver.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.python),
                    "-m",
                    "django",
                    "runserver",
                    f"127.0.0.1:{self.port}",
                    "--noreload",
                ],
                env=self.env | env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    "django-pyas2 did not start:\n" + (self.folder / "runserver.log").read_text()
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("django-pyas2 did not listen within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
