"""The oscrypto compatibility hook: needed here, and enough."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import protocols.as2.compat

COMPAT = Path(protocols.as2.compat.__file__)
TWO_DIGIT_PATCH = re.search(r"\b\d+\.\d+\.\d{2,}\b", ssl.OPENSSL_VERSION) is not None


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(
    not TWO_DIGIT_PATCH,
    reason=f"{ssl.OPENSSL_VERSION} has a one-digit patch number: oscrypto 1.3.0 reads it alone",
)
def test_the_hook_is_still_needed() -> None:
    """The day this fails, oscrypto loads on this OpenSSL by itself: remove the hook
    (protocols/as2/compat.py and its install() in protocols/as2/__init__.py)."""
    plain = _python("import pyas2lib")

    assert plain.returncode != 0
    assert "Error detecting the version of libcrypto" in plain.stderr


def test_with_the_hook_pyas2lib_imports_and_sees_this_openssl() -> None:
    hooked = _python(
        "import runpy, ssl\n"
        f"runpy.run_path({str(COMPAT)!r})['install']()\n"
        "import pyas2lib\n"
        "from oscrypto._openssl._libcrypto import libcrypto_version_info as v\n"
        "import re\n"
        "found = re.search(r'(\\d+)\\.(\\d+)\\.(\\d+)', ssl.OPENSSL_VERSION)\n"
        "want = tuple(map(int, found.groups()))\n"
        "assert v == want, (v, ssl.OPENSSL_VERSION)\n"
        "print('ok')\n"
    )

    assert hooked.returncode == 0, hooked.stderr
    assert hooked.stdout.strip() == "ok"


def test_the_hook_widens_only_that_pattern_in_only_those_modules(tmp_path: Path) -> None:
    openssl = tmp_path / "oscrypto" / "_openssl"
    openssl.mkdir(parents=True)
    (tmp_path / "oscrypto" / "__init__.py").write_text("")
    (openssl / "__init__.py").write_text("")
    old = "PATTERN = " + protocols.as2.compat.OLD_PATTERN + "\nOTHER = '\\\\d\\\\.\\\\d'\n"
    (openssl / "_libcrypto_ctypes.py").write_text(old)
    (openssl / "_libcrypto_cffi.py").write_text("PATTERN = 'already fixed'\n")
    (openssl / "_elsewhere.py").write_text(old)

    run = _python(
        f"import sys, runpy; sys.path.insert(0, {str(tmp_path)!r})\n"
        f"runpy.run_path({str(COMPAT)!r})['install']()\n"
        "import oscrypto._openssl._libcrypto_ctypes as a, oscrypto._openssl._libcrypto_cffi as b\n"
        "import oscrypto._openssl._elsewhere as c\n"
        "print(a.PATTERN, a.OTHER, b.PATTERN, c.PATTERN, sep='|')\n"
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().split("|") == [
        r"\b(\d+\.\d+\.\d+[a-z]*)\b",  # widened
        r"\d\.\d",  # the rest of the module untouched
        "already fixed",  # a fixed source loads as it is
        r"\b(\d\.\d\.\d[a-z]*)\b",  # another module keeps the old pattern
    ]
