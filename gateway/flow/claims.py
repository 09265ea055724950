"""A dropped file's claim: the atomic rename from its outbox into the spool.

The dispatcher renames the files of a burst together, on a worker thread (a rename on the
event loop waits for the file system under load): :func:`rename_all` is that batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Claim:
    """A dropped file to claim: moved from ``source`` (its outbox) to ``spool``."""

    connection: str
    name: str  # as ops named it (displayable)
    source: Path
    spool: Path


def rename_all(moves: list[tuple[Path, Path]]) -> list[Exception | None]:
    """Rename each (source, target); None or the error, per move (on a worker thread).

    FileNotFoundError means the source is gone (claimed meanwhile, or removed); a target
    folder that is missing is another error, so that it is reported rather than taken for
    "already claimed" at every scan.
    """
    outcomes: list[Exception | None] = []
    for source, target in moves:
        try:
            os.rename(source, target)
            outcomes.append(None)
        except FileNotFoundError as exc:
            if not os.path.lexists(source):
                outcomes.append(exc)
            else:  # a plain OSError (no errno): not mistaken for a vanished source
                outcomes.append(OSError(f"cannot move {source} to {target}: {exc.strerror}"))
        except OSError as exc:
            outcomes.append(exc)
    return outcomes
