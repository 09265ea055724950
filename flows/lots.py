"""Lots: several invoices of one interface code packed into one flow, and read back.

A lot is a ``.tar.gz`` or ``.zip`` archive holding each invoice as a plain file at its top
level. Packing is deterministic (fixed times, owner and modes, members in the order given), so
a lot packed again from the same invoices has the same bytes. Reading is defensive — the
archive may come from anywhere (the partner simulator reads what it is sent, the gateway reads
its own lots back to file rejected invoices): only regular files at the top level, at most
:data:`MAX_MEMBERS`, and a bound on the bytes unpacked.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from flows import naming
from flows.analysis import Analysis

#: Packaging → the extension of the flow's file.
EXTENSIONS = {"tar.gz": ".tar.gz", "zip": ".zip"}
#: Third-party connectors cite at most 500 invoices per E1 flow (not a Chorus Pro document).
MAX_MEMBERS = 500
#: What a member may add to a lot beyond its own bytes (tar header, padding, long-name
#: record), for keeping a lot under ``max_bytes`` before it is packed.
MEMBER_OVERHEAD = 2048
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class LotError(ValueError):
    """An archive that cannot be read as a lot; the message says why."""


def lot_name(flow_id: str, packaging: str) -> str:
    """The file name raccord gives a lot: ``lot-<flow id>.tar.gz``."""
    return f"lot-{flow_id}{EXTENSIONS[packaging]}"


def is_lot_name(flow_id: str, name: str) -> bool:
    """Whether ``name`` is the name :func:`lot_name` gives flow ``flow_id``."""
    return any(name == lot_name(flow_id, packaging) for packaging in EXTENSIONS)


def missing_for_complete(analysis: Analysis) -> list[str]:
    """What an invoice lacks to be packed in a lot under *Complète* (empty: fit).

    Under Complète one faulty invoice rejects every invoice of its lot, so a lot only takes
    invoices that were recognised and carry what Chorus Pro checks first: the invoice number,
    the issue date, the supplier and the buyer.
    """
    missing = []
    for field, label in (
        ("invoice_number", "invoice number"),
        ("issue_date", "issue date"),
        ("supplier_id", "supplier identifier"),
        ("buyer_id", "buyer identifier"),
    ):
        if not getattr(analysis, field):
            missing.append(label)
    return missing


def member_names(names: Sequence[str]) -> list[str]:
    """Safe, distinct names for the members (``a.xml``, ``a-2.xml`` …), in order."""
    taken: set[str] = set()
    result = []
    for name in names:
        base = naming.safe(name)
        stem, dot, ext = base.rpartition(".")
        if not dot or not stem:
            stem, ext = base, ""
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
        taken.add(candidate.lower())
        result.append(candidate)
    return result


Content = Path | bytes


def _read(content: Content) -> bytes:
    return content.read_bytes() if isinstance(content, Path) else content


def pack(members: Sequence[tuple[str, Content]], target: Path, packaging: str) -> None:
    """Write the lot ``target`` from ``(name in the lot, file or bytes)`` pairs, fsynced.

    Raises:
        ValueError: unknown packaging, no member, too many, or a name that is not a plain name.
        OSError: a member cannot be read, or the target cannot be written.
    """
    if packaging not in EXTENSIONS:
        raise ValueError(f"unknown packaging {packaging!r}; use one of {', '.join(EXTENSIONS)}")
    if not 0 < len(members) <= MAX_MEMBERS:
        raise ValueError(f"a lot holds 1 to {MAX_MEMBERS} invoices, not {len(members)}")
    for name, _ in members:
        if name != naming.safe(name):
            raise ValueError(f"lot member name {name!r} is not a plain safe name")
    with target.open("wb") as out:
        if packaging == "tar.gz":
            _pack_tar(members, out)
        else:
            _pack_zip(members, out)
        out.flush()
        os.fsync(out.fileno())


def _pack_tar(members: Sequence[tuple[str, Content]], out: io.BufferedWriter) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, content in members:
            data = _read(content)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def _pack_zip(members: Sequence[tuple[str, Content]], out: io.BufferedWriter) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, _read(content))


def packaging_of(head: bytes) -> str | None:
    """``"tar.gz"`` or ``"zip"`` from a file's first bytes, or None."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return None


def read_members(data: bytes, *, max_bytes: int = 512 * 1024 * 1024) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` members of a lot, in order.

    Raises:
        LotError: not a tar.gz or zip, corrupt, a member that is not a regular file at the top
            level, more than :data:`MAX_MEMBERS` members, or more than ``max_bytes`` unpacked.
    """
    packaging = packaging_of(data[:4])
    if packaging is None:
        raise LotError("not a tar.gz or zip archive")
    try:
        if packaging == "tar.gz":
            return _read_tar(data, max_bytes)
        return _read_zip(data, max_bytes)
    except LotError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise LotError(f"corrupt {packaging} archive: {exc}") from None


def _check_member(name: str, count: int, total: int, max_bytes: int) -> None:
    if count > MAX_MEMBERS:
        raise LotError(f"more than {MAX_MEMBERS} members")
    if total > max_bytes:
        raise LotError(f"more than {max_bytes} bytes once unpacked")
    path = PurePosixPath(name)
    if path.is_absolute() or len(path.parts) != 1 or name in (".", ".."):
        raise LotError(f"member {name!r} is not a plain file name at the top level")


def _read_tar(data: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = []
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar:
            if not info.isfile():
                raise LotError(f"member {info.name!r} is not a regular file")
            total += info.size
            _check_member(info.name, len(members) + 1, total, max_bytes)
            extracted = tar.extractfile(info)
            assert extracted is not None  # a regular file
            members.append((info.name, extracted.read()))
    return members


def _read_zip(data: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = []
    total = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.is_dir():
                raise LotError(f"member {info.filename!r} is a folder")
            total += info.file_size
            _check_member(info.filename, len(members) + 1, total, max_bytes)
            with archive.open(info) as member:
                content = member.read(info.file_size + 1)
            if len(content) != info.file_size:
                raise LotError(f"member {info.filename!r} is not the size its header says")
            members.append((info.filename, content))
    return members
