"""``raccord analyze``: what raccord makes of files, their validation and routing; nothing is
sent."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows import validation as rulebook
from gateway import logs
from gateway.cli import output
from gateway.cli.common import NOT_RIGHT, OK, UsageError, load_config, output_format
from gateway.config import Config

if TYPE_CHECKING:
    from flows.analysis import Analysis


def _routing(result: Analysis, config: Config) -> dict[str, Any]:
    from gateway.flow.dispatcher import route

    today = datetime.now(UTC).date()
    verdicts: dict[str, str] = {}
    carrier = None
    for conn in config.connections:
        if not result.ok:
            verdicts[conn.name] = result.message or "not sendable"
            continue
        refusal = route(conn, result, today)
        verdicts[conn.name] = "would carry it" if refusal is None else refusal.message
        if refusal is None and carrier is None:
            carrier = conn.name
    return {"connection": carrier, "connections": verdicts}


def _rules(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    for name in wanted:
        if name not in rulebook.RULE_SETS:
            raise UsageError(
                f"--rules: unknown rule set {name!r} (known: {', '.join(rulebook.RULE_SETS)})"
            )
    if not wanted:
        raise UsageError(f"--rules: name a rule set ({', '.join(rulebook.RULE_SETS)})")
    return wanted


def _validations(
    paths: list[Path], results: list[Analysis], wanted: tuple[str, ...], timeout: float
) -> list[rulebook.Validation]:
    """Each file's validation (files whose format is unknown are not checked)."""
    from gateway.flow import validator

    async def run() -> list[rulebook.Validation]:
        checked = [i for i, r in enumerate(results) if r.format in validator.CHECKED_FORMATS]
        pool = validator.Validator(
            workers=max(1, min(len(checked), validator.default_workers())), timeout=timeout
        )

        async def one(path: Path) -> rulebook.Validation:
            try:
                return await pool.validate(path, wanted)
            except (validator.ValidationTimeout, validator.ValidationCrashed, OSError) as exc:
                return rulebook.not_checked(str(exc))

        try:
            done = await asyncio.gather(*(one(paths[i]) for i in checked))
        finally:
            await pool.close()
        found = dict(zip(checked, done, strict=True))
        return [
            found.get(i) or rulebook.not_checked(results[i].message or "format not recognised")
            for i in range(len(results))
        ]

    logs.configure("stderr")  # a worker's warnings must not mix with the JSON on stdout
    try:
        return asyncio.run(run())
    except validator.ValidatorUnavailable as exc:
        raise UsageError(str(exc)) from None


def cmd_analyze(args: argparse.Namespace) -> int:
    """``raccord analyze``: each file's facts, validation and (with ``--config``) routing."""

    from flows.analysis import analyze

    config = load_config(args) if args.config else None
    wanted = _rules(args.rules)
    paths: list[Path] = []
    results: list[Analysis] = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{name}: no such file")
        paths.append(path)
        results.append(analyze(path))
    timeout = config.gateway.analysis_timeout if config is not None else 20.0
    validations = _validations(paths, results, wanted, timeout)
    records = []
    status = OK
    for path, result, checked in zip(paths, results, validations, strict=True):
        record: dict[str, Any] = {"file": str(path), **result.to_dict()}
        if config is not None:
            record.update(_routing(result, config))
        record["validation"] = checked.to_dict()
        if checked.note:
            record["validation_note"] = checked.note
        record["valid"] = checked.status.value
        if not result.ok or checked.invalid:
            status = NOT_RIGHT
        records.append(record)
    fmt = output_format(args)
    if fmt == "table":
        for record in records:
            print(record["file"])
            for key, value in record.items():
                skip = ("file", "validation", "valid", "validation_note")
                if key in skip or value in (None, {}):
                    continue
                if isinstance(value, dict):
                    for sub, text in value.items():
                        print(f"  {key}.{sub}: {text}")
                else:
                    print(f"  {key}: {value}")
            _print_validation(record["validation"], record.get("validation_note"))
    else:
        columns = [
            "file",
            "format",
            "interface_code",
            "invoice_number",
            "issue_date",
            "supplier_id",
            "buyer_id",
            "size",
            "problem",
            "valid",
            "connection",
        ]
        output.render(records, columns, fmt)
    return status


def _print_validation(checked: dict[str, Any], note: str | None) -> None:
    rules = ", ".join(checked["rules"])
    print(f"  validation: {checked['status']}" + (f" ({rules})" if rules else ""))
    if note:
        print(f"    {note}")
    for kind, items in (("", checked["errors"]), ("warning ", checked["warnings"])):
        for item in items:
            print(f"    {kind}{item['rule']}  {item['message']}  {item['location']}".rstrip())
