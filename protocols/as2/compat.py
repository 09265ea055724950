"""Make pyas2lib importable on OpenSSL releases with a two-digit patch number.

pyas2lib pins ``oscrypto==1.3.0``. When oscrypto loads libcrypto it reads the library's version
string with the pattern ``\\d\\.\\d\\.\\d[a-z]*``, which finds nothing in "OpenSSL 3.0.19" (a
two-digit patch number, as Debian bookworm and Ubuntu 24.04 ship), and ``import pyas2lib`` then
fails with "Error detecting the version of libcrypto" (oscrypto issues #75 and #78). The fix is
upstream but was never released.

:func:`install` puts an import hook in front of the others that loads oscrypto's two libcrypto
binding modules from their own source with that one pattern widened to ``\\d+\\.\\d+\\.\\d+``.
Nothing else changes, and a module whose source no longer holds the old pattern (a fixed
oscrypto) loads untouched. ``tests/protocols/as2/test_compat.py`` fails the day an unpatched
import works here, so the hook can be removed then.

This module imports nothing from raccord: the test partner's own virtual environment loads it
by path too (its django-pyas2 uses the same pyas2lib).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

#: The modules that check libcrypto's version when oscrypto loads it (ctypes or cffi binding).
PATCHED_MODULES = frozenset(
    {"oscrypto._openssl._libcrypto_ctypes", "oscrypto._openssl._libcrypto_cffi"}
)
#: The pattern as oscrypto 1.3.0 writes it in its source, and its widened form.
OLD_PATTERN = "'\\\\b(\\\\d\\\\.\\\\d\\\\.\\\\d[a-z]*)\\\\b'"
NEW_PATTERN = "'\\\\b(\\\\d+\\\\.\\\\d+\\\\.\\\\d+[a-z]*)\\\\b'"


class _WideningLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module from its source with the version pattern widened.

    The compiled cache is bypassed: pip wrote one for the unpatched source at install time.
    """

    patched = False

    def get_code(self, fullname: str) -> CodeType:
        source = self.get_data(self.path).decode("utf-8")
        if OLD_PATTERN in source:
            source = source.replace(OLD_PATTERN, NEW_PATTERN)
            type(self).patched = True
        return compile(source, self.path, "exec", dont_inherit=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PATCHED_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return None
        spec.loader = _WideningLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the hook in place (idempotent); call before anything imports pyas2lib or oscrypto."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def patched() -> bool:
    """Whether a binding module was loaded with the widened pattern in this process."""
    return _WideningLoader.patched
