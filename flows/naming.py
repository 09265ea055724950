"""Flow identifiers and remote file names.

The EDI file-naming rule of Chorus Pro is not public, so the remote name is a per-connection
template (``remote_name``). Placeholders:

============== ==============================================================
``{interface}`` interface code, e.g. ``FSO1100A``
``{partner_code}`` the connection's Code Appli Partenaire, e.g. ``VFE056``
``{flow_id}``   raccord's flow identifier (unique, stable across resends)
``{stem}``      the dropped file's name without its extension, made safe
``{ext}``       the dropped file's extension with its dot (``.xml``, ``.tar.gz``), or empty
``{name}``      ``{stem}{ext}``
``{date}``      the flow's creation date, ``YYYYMMDD`` (UTC)
``{time}``      the flow's creation time, ``HHMMSS`` (UTC)
``{structure}`` the issuing structure's SIRET
============== ==============================================================

Remote names keep only ASCII letters, digits, ``.``, ``_`` and ``-``: anything else in a
dropped name (spaces, accents, slashes) becomes ``_``, so a remote name can never climb out of
the upload folder.
"""

from __future__ import annotations

import functools
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

PLACEHOLDERS = frozenset(
    {"interface", "partner_code", "flow_id", "stem", "ext", "name", "date", "time", "structure"}
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FLOW_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
MAX_REMOTE_NAME = 200


class TemplateError(ValueError):
    """A ``remote_name`` template that cannot work; the message says why."""


def new_flow_id(now: datetime, token: str | None = None) -> str:
    """A flow identifier: UTC time of creation plus 6 random hex digits (sortable, unique)."""
    token = token if token is not None else secrets.token_hex(3)
    return f"{now:%Y%m%dT%H%M%SZ}-{token}"


class FlowIds:
    """Issues flow identifiers that never repeat within a process.

    The 6 hex digits after the time start at a random point and count up (modulo 16⁶), so a
    burst of thousands of files in one second cannot draw the same identifier twice (random
    digits would: about one chance in 200 per burst of 1,000). A restarted process starts at
    another random point, in a later second.
    """

    SPACE = 16**6

    def __init__(self, start: int | None = None) -> None:
        self._next = secrets.randbelow(self.SPACE) if start is None else start % self.SPACE

    def new(self, now: datetime) -> str:
        token = f"{self._next:06x}"
        self._next = (self._next + 1) % self.SPACE
        return new_flow_id(now, token)


def is_flow_id(value: str) -> bool:
    return bool(_FLOW_ID.match(value))


def safe(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    cleaned = _UNSAFE.sub("_", text)
    return cleaned.lstrip(".") or "_"


def check_template(template: str) -> None:
    """Validate a ``remote_name`` template.

    Raises:
        TemplateError: unknown or malformed placeholder, or no ``{flow_id}`` (without it two flows
            could be given the same remote name, and a resend could not be recognised).
    """
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as exc:
        raise TemplateError(f"malformed template {template!r}: {exc}") from None
    unknown = sorted(set(fields) - PLACEHOLDERS)
    if unknown:
        known = ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
        raise TemplateError(f"unknown placeholder {{{unknown[0]}}}; use one of {known}")
    if "flow_id" not in fields:
        raise TemplateError("the template must contain {flow_id} so that every flow is unique")
    if "/" in template:
        raise TemplateError("the template must not contain '/': it names a file, not a path")


@functools.lru_cache(maxsize=64)
def _placeholders(template: str) -> frozenset[str]:
    """The placeholders of a template that passes :func:`check_template` (remembered: a
    configuration has a few templates, every flow renders one)."""
    check_template(template)
    return frozenset(field for _, field, _, _ in string.Formatter().parse(template) if field)


@dataclass(frozen=True)
class NameParts:
    interface: str
    partner_code: str
    flow_id: str
    original_name: str
    created: datetime
    structure: str = ""


#: Extensions made of two suffixes, kept whole in ``{ext}``.
DOUBLE_EXTENSIONS = (".tar.gz",)


def split_extension(name: str) -> tuple[str, str]:
    """``("facture", ".xml")``; ``("lot-…", ".tar.gz")``; ``("README", "")`` (of the last
    component of ``name``)."""
    path = PurePath(name)
    name = path.name
    for double in DOUBLE_EXTENSIONS:
        if name.lower().endswith(double) and len(name) > len(double):
            return name[: -len(double)], name[-len(double) :]
    return (path.stem, path.suffix) if path.suffix else (name, "")


def remote_name(template: str, parts: NameParts) -> str:
    """Render ``template`` for one flow (see the module docstring for placeholders).

    Raises:
        TemplateError: the template is invalid, or the result is empty or too long.
    """
    used = _placeholders(template)
    stem, ext = split_extension(parts.original_name)
    ext = safe(ext) if ext else ""
    if ext and not ext.startswith("."):
        ext = "." + ext.lstrip("_")
    stem = safe(stem)
    rendered = template.format(
        interface=safe(parts.interface),
        partner_code=safe(parts.partner_code),
        flow_id=parts.flow_id,
        stem=stem,
        ext=ext,
        name=stem + ext,
        # formatted only when used: strftime is the dearest part of a rendering, and the
        # default template has neither
        date=f"{parts.created:%Y%m%d}" if "date" in used else "",
        time=f"{parts.created:%H%M%S}" if "time" in used else "",
        structure=safe(parts.structure),
    )
    rendered = safe(rendered)
    if len(rendered) > MAX_REMOTE_NAME:
        raise TemplateError(f"remote name longer than {MAX_REMOTE_NAME} characters: {rendered}")
    return rendered
