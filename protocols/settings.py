"""Reading configuration tables into typed values, with errors an operator can act on.

Shared by the gateway's configuration and by every protocol's own section, so that a typo in
``[connection.sftp]`` is reported exactly like one in ``[gateway]``: the file, the dotted key,
what is wrong, and the nearest valid key.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Secret",
    "Section",
    "SettingsError",
    "nearest",
    "parse_duration",
    "parse_size",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


class SettingsError(ValueError):
    """A configuration value is wrong; ``key`` is the dotted key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def parse_duration(value: str | int | float, key: str) -> float:
    """``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"`` → seconds. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise SettingsError(key, f'expected a duration like "30s", got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise SettingsError(
                key, f'expected a duration like "250ms", "30s", "5m" or "1h", got {value!r}'
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise SettingsError(key, "a duration cannot be negative")
    return seconds


def parse_size(value: str | int, key: str) -> int:
    """``"30000KB"``, ``"30MB"``, ``"1GiB"``, ``1024`` → bytes (KB = 1000 bytes, KiB = 1024)."""
    if isinstance(value, bool):
        raise SettingsError(key, f'expected a size like "30MB", got {value!r}')
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise SettingsError(key, f'expected a size like "30000KB" or "30MB", got {value!r}')
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if size <= 0:
        raise SettingsError(key, "a size must be positive")
    return size


def nearest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows itself in ``repr``, logs or error messages."""

    value: str
    source: str

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    __str__ = __repr__


class Section:
    """A TOML table being read: typed getters, then :meth:`finish` rejects unknown keys."""

    def __init__(self, raw: Mapping[str, Any], where: str, base_dir: Path | None = None) -> None:
        if not isinstance(raw, Mapping):
            raise SettingsError(where, f"expected a table, got {type(raw).__name__}")
        self._raw = raw
        self._where = where
        self._seen: set[str] = set()
        #: Facts from the enclosing table a protocol may need (``environment`` of the
        #: connection), passed down to sub-tables.
        self.context: dict[str, str] = {}
        self.base_dir = base_dir or Path.cwd()

    def key(self, name: str) -> str:
        return f"{self._where}.{name}" if self._where else name

    def keys(self) -> list[str]:
        return [str(name) for name in self._raw]

    def has(self, name: str) -> bool:
        return name in self._raw

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        if name not in self._raw:
            if required:
                typo = nearest(name, [str(k) for k in self._raw if k not in self._seen])
                found = f" (found {typo!r}: a typo?)" if typo else ""
                raise SettingsError(self.key(name), f"is required{found}")
            return None
        return self._raw[name]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name, required and default is None)
        if value is None:
            if default is None:
                raise SettingsError(self.key(name), "is required")
            return default
        if not isinstance(value, str):
            raise SettingsError(self.key(name), f"expected a string, got {value!r}")
        return str(value)

    def strings(self, name: str) -> list[str]:
        """A list of non-empty strings; empty when absent."""
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(self.key(name), f"expected a list of names, got {value!r}")
        return [str(v) for v in value]

    def optional_str(self, name: str) -> str | None:
        value = self._get(name, False)
        if value is not None and not isinstance(value, str):
            raise SettingsError(self.key(name), f"expected a string, got {value!r}")
        return value

    def url(self, name: str, *, required: bool = True) -> str | None:
        """An ``http://`` or ``https://`` address with a host (None if absent and optional)."""
        value = self.string(name, required=True) if required else self.optional_str(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                self.key(name), f"expected an http:// or https:// URL, got {value!r}"
            )
        return value

    def template(self, name: str, default: str, fields: Iterable[str]) -> str:
        """A ``str.format`` template whose placeholders are all among ``fields``."""
        value = self.string(name, default)
        known = sorted(fields)
        try:
            used = {
                field for _, field, _, _ in string.Formatter().parse(value) if field is not None
            }
        except ValueError as exc:
            raise SettingsError(self.key(name), f"malformed template {value!r}: {exc}") from None
        unknown = sorted(used - set(known))
        if unknown:
            hint = nearest(unknown[0], known)
            did_you_mean = f" (did you mean {{{hint}}}?)" if hint else ""
            raise SettingsError(
                self.key(name),
                f"unknown placeholder {{{unknown[0]}}}{did_you_mean}; known: "
                + ", ".join("{" + field + "}" for field in known),
            )
        return value

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        options = list(choices)
        value = self.string(name, default)
        if value not in options:
            hint = nearest(value, options)
            did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
            raise SettingsError(
                self.key(name), f"{value!r} is not one of {', '.join(options)}{did_you_mean}"
            )
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(self.key(name), f"expected a whole number, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            raise SettingsError(self.key(name), f"must be between {minimum}{upper}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SettingsError(self.key(name), f"expected true or false, got {value!r}")
        return value

    def duration(self, name: str, default: str) -> float:
        value = self._get(name, False)
        return parse_duration(default if value is None else value, self.key(name))

    def size(self, name: str, default: str) -> int:
        value = self._get(name, False)
        return parse_size(default if value is None else value, self.key(name))

    def date(self, name: str, default: date | None = None) -> date:
        value = self._get(name, default is None)
        if value is None:
            assert default is not None
            return default
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = date.fromisoformat(value)
        if not isinstance(value, date):
            raise SettingsError(self.key(name), f"expected a date like 2026-06-30, got {value!r}")
        return value

    def path(self, name: str, *, required: bool = True) -> Path | None:
        value = self.optional_str(name) if not required else self.string(name, required=True)
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def table(self, name: str) -> Section | None:
        value = self._get(name, False)
        if value is None:
            return None
        child = Section(value, self.key(name), self.base_dir)
        child.context = dict(self.context)
        return child

    def secret(self, name: str, *, required: bool = True) -> Secret | None:
        """A literal, ``{ env = "NAME" }`` or ``{ file = "/path" }``."""
        value = self._get(name, required)
        if value is None:
            return None
        key = self.key(name)
        if isinstance(value, str):
            return Secret(value, "literal")
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, ref),) = value.items()
            if kind == "env" and isinstance(ref, str):
                if ref not in os.environ:
                    raise SettingsError(key, f"environment variable {ref} is not set")
                return Secret(os.environ[ref], f"env {ref}")
            if kind == "file" and isinstance(ref, str):
                path = Path(ref)
                try:
                    return Secret(path.read_text().rstrip("\r\n"), f"file {ref}")
                except OSError as exc:
                    raise SettingsError(
                        key, f"cannot read secret file {ref}: {exc.strerror}"
                    ) from None
        raise SettingsError(key, 'expected a string, { env = "NAME" } or { file = "/path" }')

    def raw(self, name: str) -> Any:
        return self._get(name, False)

    def finish(self) -> None:
        """Reject keys that were never read, suggesting the nearest known key."""
        for name in self._raw:
            if name not in self._seen:
                hint = nearest(name, self._seen)
                did_you_mean = f"; did you mean {hint!r}?" if hint else ""
                known = ", ".join(sorted(self._seen))
                raise SettingsError(
                    self.key(name), f"unknown key{did_you_mean} (known keys: {known})"
                )
