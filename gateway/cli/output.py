"""Rendering lists of records as a table (terminals), JSON or CSV (the commands' --format)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

FORMATS = ("table", "json", "csv")


def default_format() -> str:
    return "table" if sys.stdout.isatty() else "json"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: str,
    stream: TextIO | None = None,
) -> None:
    """Write ``records`` (to stdout by default): JSON gets every key, table and CSV ``columns``.

    JSON and CSV are written record by record (an iterator of a million records is never held);
    the table, whose widths depend on every row, takes them all first."""
    stream = stream or sys.stdout
    if fmt == "json":
        # What json.dump(list, indent=2) writes, one element at a time.
        stream.write("[")
        empty = True
        for record in records:
            text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
            stream.write(("\n  " if empty else ",\n  ") + text.replace("\n", "\n  "))
            empty = False
        stream.write("]\n" if empty else "\n]\n")
    elif fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([_cell(record.get(column)) for column in columns])
    else:
        records = list(records)
        rows = [[_cell(record.get(column)) for column in columns] for record in records]
        widths = [
            min(60, max([len(column)] + [len(row[i]) for row in rows]))
            for i, column in enumerate(columns)
        ]
        stream.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        stream.write("\n")
        for row in rows:
            cells = [
                (cell if len(cell) <= w else cell[: w - 1] + "…").ljust(w)
                for cell, w in zip(row, widths, strict=True)
            ]
            stream.write("  ".join(cells).rstrip() + "\n")
        if not rows:
            stream.write("(none)\n")
