"""The npm package ``libas2`` (0.8.2, Node.js) as a third AS2 implementation on 127.0.0.1.

libas2 shares nothing with pyas2lib: its MIME is nodemailer's (header names such as
``As2-From``, ``As2-Version``, ``Message-Id``), its CMS is PKI.js over WebCrypto (RSAES-OAEP
with SHA-256 key transport). :func:`ensure_libas2` installs it with npm into ``.cache/libas2``
beside the project once (``libas2/package.json`` and its lock pin the versions; PKI.js must be
2.1.x: 2.4 cannot sign); the scripts in ``libas2/`` run it as separate ``node`` processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "libas2"
HERE = Path(__file__).parent / "libas2"
#: Node ≥ 18.19.1 refuses PKCS#1 v1.5 decryption (CVE-2023-46809, the Marvin attack) unless
#: this flag reverts it; libas2 needs it to open what raccord (and most AS2 peers) encrypt.
REVERT = "--security-revert=CVE-2023-46809"


def ensure_libas2() -> Path:
    """The folder whose ``node_modules`` holds libas2, installing it on first use (a lock
    keeps it single). Skips when node or npm is missing — and fails on CI, where
    scripts/install-and-test installs them."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = (
            "Node.js and npm are not installed (Debian packages nodejs and npm); "
            "scripts/install-and-test installs them"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    wanted = hashlib.sha256(
        (HERE / "package.json").read_bytes() + (HERE / "package-lock.json").read_bytes()
    ).hexdigest()
    CACHE.mkdir(parents=True, exist_ok=True)
    marker = CACHE / ".raccord-ready"
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == wanted:
            return CACHE
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(HERE / name, CACHE / name)
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=CACHE,
            check=True,
            timeout=600,
        )
        marker.write_text(wanted)
    return CACHE


def node_command(script: str) -> list[str]:
    """How to run one of the ``libas2/`` scripts with the installed libas2."""
    ensure_libas2()
    node = shutil.which("node")
    assert node is not None
    return [node, REVERT, str(HERE / script)]


def node_env() -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(CACHE / "node_modules")}


def run(script: str, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Run a ``libas2/`` script with ``request`` as JSON on its input; its JSON output."""
    done = subprocess.run(
        node_command(script),
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=timeout,
        env=node_env(),
        check=False,
    )
    problem = done.stderr.decode(errors="replace")
    assert done.returncode == 0, problem
    # The answer is the last line: libas2's dependencies may print on standard output too.
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    assert lines, f"{script} printed nothing: {problem}"
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise AssertionError(f"{script} printed no answer: {lines[-5:]} {problem}") from None
    return result


class Endpoint:
    """``receive.js``: a libas2 AS2 endpoint on 127.0.0.1 (AS2 name ``ours["id"]``) that
    stores payloads in ``folder`` and answers MDNs, signed or not (``mdn_signing``)."""

    def __init__(
        self,
        folder: Path,
        ours: dict[str, str],
        theirs: dict[str, str],
        *,
        mdn_signing: str | bool = False,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.request: dict[str, Any] = {
            "ours": ours,
            "theirs": theirs,
            "folder": str(folder),
            "mdnSigning": mdn_signing,
        }
        self.reports: list[dict[str, Any]] = []
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/as2"

    def start(self) -> None:
        self._process = subprocess.Popen(
            node_command("receive.js"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=node_env(),
        )
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(self.request).encode())
        self._process.stdin.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self._ready.wait(30), "the libas2 endpoint did not start listening"
        assert self.port, "the libas2 endpoint stopped before listening"

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if not line.strip().startswith(b"{"):
                continue
            report = json.loads(line)
            if "port" in report:
                self.port = report["port"]
                self._ready.set()
            else:
                self.reports.append(report)
        self._ready.set()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
