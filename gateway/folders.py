"""The folder layout under ``data_dir`` and the durable file operations on it.

::

    data_dir/journal.sqlite
    data_dir/spool/<connection>/<flow_id>--<name>     claimed, being processed
    data_dir/spool/<connection>/.<flow_id>.unsure.json  a sender's marker: the partner may
                                                      hold the flow (removed when it is filed)
    data_dir/outbox/<connection>/                     ops drop files here
    data_dir/sent/<connection>/YYYY-MM-DD/            + <name>.receipt.json
    data_dir/error/<connection>/                      + <name>.error.json
    data_dir/rejected/<connection>/  data_dir/inbox/<connection>/

The spool is on the same file system as the outbox, so claiming is one atomic rename. Nothing is
removed before it is durably written where it goes: metadata files are written to a temporary
name, fsynced, renamed, and the directory fsynced; data files move by rename (then the
directories are fsynced). :func:`place_all` files many flows at once and fsyncs each folder
once for all of them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from flows import naming
from protocols.base import MARKER_SUFFIX, outcome_marker

IGNORED_SUFFIXES = (".tmp", ".part", ".filepart")
SPOOL_SEPARATOR = "--"


def is_candidate(name: str) -> bool:
    """A name ops may still be writing: hidden, or ending in .tmp/.part/.filepart."""
    return not (name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES))


def display_name(name: str) -> str:
    """``name`` as valid text: bytes that are not UTF-8 (kept by os.fsdecode) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


#: Bytes a file name may have on Linux file systems.
NAME_MAX = 255

#: Bytes kept free in a data file's name for what is added to it: the report beside it
#: (``.receipt.json``) and that report's temporary name (``.<name>.receipt.json.tmp``).
REPORT_ROOM = 20


def fit_name(name: str, room: int) -> str:
    """``name`` if it has at most ``room`` bytes, else shortened to fit: its end is cut before
    the extension (kept when short), and ``~`` marks the cut. Never splits a character."""
    if len(os.fsencode(name)) <= room:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem or len(os.fsencode(suffix)) > 16:
        stem, suffix = name, ""
    tail = ("~." + suffix) if suffix else "~"
    budget = room - len(os.fsencode(tail))
    # A character cut in the middle is dropped whole ("ignore").
    return os.fsencode(stem)[: max(0, budget)].decode("utf-8", "ignore") + tail


def spool_name(flow_id: str, original_name: str) -> str:
    """The claimed file's name in the spool: its flow identifier, then its original name,
    shortened if the whole would be too long for the file system (the journal keeps the
    original)."""
    head = f"{flow_id}{SPOOL_SEPARATOR}"
    return head + fit_name(original_name, NAME_MAX - len(os.fsencode(head)))


def parse_spool_name(name: str) -> tuple[str, str] | None:
    """``(flow_id, original_name)`` of a spool file, or None for a foreign file."""
    flow_id, sep, original = name.partition(SPOOL_SEPARATOR)
    if not sep or not original or not naming.is_flow_id(flow_id):
        return None
    return flow_id, original


@functools.lru_cache(maxsize=1024)
def _folder(data_dir: Path, *parts: str) -> Path:
    """``data_dir`` joined with ``parts``: remembered for the folders every flow names (a Path
    is immutable, so one built once serves every flow, and building one parses each component
    again)."""
    return data_dir.joinpath(*parts)


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def journal(self) -> Path:
        return self.data_dir / "journal.sqlite"

    def outbox(self, connection: str) -> Path:
        return self.data_dir / "outbox" / connection

    def spool(self, connection: str) -> Path:
        return _folder(self.data_dir, "spool", connection)

    def sent(self, connection: str, day: date) -> Path:
        return _folder(self.data_dir, "sent", connection, day.isoformat())

    def error(self, connection: str) -> Path:
        return _folder(self.data_dir, "error", connection)

    def rejected(self, connection: str) -> Path:
        return self.data_dir / "rejected" / connection

    def inbox(self, connection: str) -> Path:
        return self.data_dir / "inbox" / connection

    def spooled_connections(self) -> list[str]:
        """Every connection with a spool folder, configured or not."""
        root = self.data_dir / "spool"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def folders(self, connection: str) -> tuple[Path, ...]:
        """The folders raccord reads and writes for ``connection``."""
        return (
            self.outbox(connection),
            self.spool(connection),
            self.error(connection),
            self.rejected(connection),
            self.inbox(connection),
            self.data_dir / "sent" / connection,
        )

    def create(self, connections: list[str]) -> None:
        for name in connections:
            for folder in self.folders(name):
                folder.mkdir(parents=True, exist_ok=True)

    def refuse_links(self, connections: list[str]) -> None:
        """Refuse a folder of the layout that is a symbolic link or lies under one.

        Through a link, the outbox would hand raccord files from outside data_dir (whoever can
        point it elsewhere chooses what is sent to Chorus Pro), and sent/ or error/ would put
        invoices outside it. Resolving the link once at start would still follow a link
        changed later, so raccord takes no link at all below data_dir; data_dir itself may be
        one (it is the root the operator chose).

        Raises:
            LinkedFolder: naming the connection, the link and where it points.
        """
        for name in connections:
            for folder in self.folders(name):
                link = _first_link(self.data_dir, folder)
                if link is not None:
                    raise LinkedFolder(self, name, folder, link)


class LinkedFolder(ValueError):
    """A folder of the layout is a symbolic link, or lies under one."""

    def __init__(self, layout: Layout, connection: str, folder: Path, link: Path) -> None:
        whose = f"the {folder.relative_to(layout.data_dir).parts[0]}/ folder of {connection}"
        what = f"{whose}, {link}," if link == folder else f"{link}, above {whose},"
        super().__init__(
            f"{what} is a symbolic link (to {os.readlink(link)}); raccord reads and writes only "
            f"real folders inside data_dir ({layout.data_dir}), so that no file is taken from "
            "or put outside it: replace the link with a folder (for another disk, move "
            "data_dir there)"
        )
        self.connection, self.folder, self.link = connection, folder, link


def _first_link(root: Path, folder: Path) -> Path | None:
    """The first component of ``folder`` below ``root`` that is a symbolic link, or None.

    A component this user may not look into ends the search: a command run by someone
    without access to data_dir cannot read through it either, and the daemon, which can,
    checks it at its start."""
    here = root
    for part in folder.relative_to(root).parts:
        here = here / part
        try:
            if here.is_symlink():
                return here
        except PermissionError:
            return None
    return None


def fsync_dir(path: Path) -> None:
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: a hidden ``.tmp`` name in
    the same folder, which intake never picks up and a later write of the same file reuses."""
    return path.with_name(f".{path.name}.tmp")


def write_bytes(path: Path, payload: bytes, *, sync_dir: bool = True) -> None:
    """Write ``path`` atomically and durably (temp file, fsync, rename, fsync of the folder
    unless the caller does it)."""
    temp = temporary(path)
    with temp.open("wb") as out:
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    temp.replace(path)
    if sync_dir:
        fsync_dir(path.parent)


def write_json(path: Path, data: dict[str, Any], *, sync_dir: bool = True) -> None:
    """Write ``data`` as indented JSON to ``path``, like :func:`write_bytes`."""
    write_bytes(path, _json_bytes(data), sync_dir=sync_dir)


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str).encode() + b"\n"


@dataclass(frozen=True)
class Placement:
    """Put the data file ``spool`` at ``target``, with ``document`` beside it as
    ``<target name><suffix>`` (a receipt or an error report)."""

    spool: Path
    target: Path
    suffix: str
    document: dict[str, Any]


def place_all(placements: list[Placement]) -> list[Exception | None]:
    """File each placement: its report (written to a temporary name, fsynced, renamed), then
    its data file (renamed); then make every touched folder durable once. Idempotent: a
    placement whose data file is already at its target (a crash after the move) only rewrites
    its report. Returns None or the error per item.

    The reports are fsynced all together from a few threads: the file system commits
    concurrent fsyncs together in one journal commit, where one after the other each waits for
    its own. They are written, fsynced and renamed in three passes rather than by
    :func:`write_bytes` on those threads: there each thread's writes would wait for the GIL.
    """
    outcomes: list[Exception | None] = [None] * len(placements)
    touched: dict[Path, list[int]] = {}  # folder -> placements that need it durable
    staged: list[tuple[int, Path, Path]] = []  # (placement, report's temporary name, report)
    for index, item in enumerate(placements):
        try:
            folder = item.target.parent
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                touched.setdefault(folder.parent, []).append(index)
            report = folder / (item.target.name + item.suffix)
            temp = temporary(report)
            temp.write_bytes(_json_bytes(item.document))
            staged.append((index, temp, report))
        except OSError as exc:
            outcomes[index] = exc
    synced = _syncers().map(_fsync_file, [temp for _, temp, _ in staged])
    for (index, temp, report), error in zip(staged, synced, strict=True):
        item = placements[index]
        try:
            if error is not None:
                raise error
            os.replace(temp, report)
            touched.setdefault(report.parent, []).append(index)
            # lexists: the entry itself (a symbolic link is filed as a link, never followed).
            if os.path.lexists(item.spool):
                os.rename(item.spool, item.target)
                touched.setdefault(item.spool.parent, []).append(index)
            elif not os.path.lexists(item.target):
                raise FileNotFoundError(
                    f"{item.spool} vanished before it was filed to {item.target}"
                )
            forget_marker(item.spool)
        except OSError as exc:
            outcomes[index] = exc
    for folder, indexes in touched.items():
        try:
            fsync_dir(folder)
        except OSError as exc:
            for index in indexes:
                outcomes[index] = outcomes[index] or exc
    return outcomes


def forget_marker(spool: Path) -> None:
    """Remove what a sender kept beside the spool file ``spool`` on the flow's outcome
    (:func:`protocols.base.outcome_marker`): the flow is filed, its outcome settled. Not made
    durable: one that comes back after a crash is removed at the next start
    (:func:`stray_markers`)."""
    parsed = parse_spool_name(spool.name)
    if parsed is not None:
        outcome_marker(spool, parsed[0]).unlink(missing_ok=True)


def stray_markers(folder: Path, names: list[str]) -> list[Path]:
    """The outcome markers among ``names`` (a spool folder's entries) whose flow has no file
    left in ``folder``: filed, or removed by hand."""
    flows = {parsed[0] for name in names if (parsed := parse_spool_name(name)) is not None}
    return [
        folder / name
        for name in names
        if name.startswith(".")
        and name.endswith(MARKER_SUFFIX)
        and name[1 : -len(MARKER_SUFFIX)] not in flows
    ]


@functools.cache
def _syncers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="fsync")


def _fsync_file(path: Path) -> OSError | None:
    """Make ``path``'s data durable; the error, if any (run on the fsync threads)."""
    try:
        _fsync(path, os.O_RDONLY)
    except OSError as exc:
        return exc
    return None


def free_name(
    folder: Path, name: str, flow_id: str, taken: Callable[[Path], bool] = Path.exists
) -> Path:
    """``folder/name``, or ``folder/<stem>.<flow_id>.<suffix>`` if ``taken`` says it is; a
    name too long for the file system (with its report beside it) is shortened first."""
    name = fit_name(name, NAME_MAX - REPORT_ROOM)
    target = folder / name
    if not taken(target):
        return target
    name = fit_name(name, NAME_MAX - REPORT_ROOM - len(flow_id) - 1)
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return folder / f"{name}.{flow_id}"
    return folder / f"{stem}.{flow_id}.{suffix}"


def move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (same file system) and make both directories durable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` durably and atomically (temp file, fsync, rename, fsync
    dir); ``source`` is left as it is."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary(target)
    with source.open("rb") as src, temp.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temp, target)
    fsync_dir(target.parent)
