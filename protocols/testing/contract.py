"""The sender contract: what every protocol's sender must do, as one suite that the built-in
senders and any plugin run (rclone's idea: one conformance suite, every backend).

A plugin's test calls, with a partner it can look into::

    from protocols.testing import contract

    checked = asyncio.run(contract.verify(make_sender, partner.delivered, tmp_path))

``make_sender()`` returns a new sender for the connection under test; ``delivered(name)`` the
bytes the partner holds under ``name`` (None when it holds nothing by that name);
``make_unreachable()`` (optional) a sender whose partner cannot be reached. The suite raises
:class:`ContractBroken` naming the first clause broken and returns the clauses checked — those
that a sender's capabilities exclude are not checked, so the list says what was proven.

No test framework is imported: plain ``async`` code with its own assertion error.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from protocols.base import Outbound, Receipt, Sender
from protocols.errors import TransferError


class ContractBroken(AssertionError):
    """A sender does not do what raccord relies on; the message names the clause."""


def _flow(workdir: Path, data: bytes, *, remote_name: str | None = None) -> Outbound:
    flow_id = f"contract-{uuid.uuid4().hex[:12]}"
    path = workdir / f"{flow_id}.xml"
    path.write_bytes(data)
    return Outbound(
        flow_id=flow_id,
        path=path,
        remote_name=remote_name or f"FSO1100A_CONTRACT_{flow_id}.xml",
        interface_code="FSO1100A",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _invoice(label: str) -> bytes:
    return (
        b"<?xml version='1.0' encoding='UTF-8'?>\n"
        b"<Invoice xmlns='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'>"
        + f"<ID>{label}</ID>".encode()
        + b"</Invoice>\n"
    )


def _expect(clause: str, condition: bool, detail: str) -> None:
    if not condition:
        raise ContractBroken(f"{clause}: {detail}")


async def verify(
    make_sender: Callable[[], Sender],
    delivered: Callable[[str], bytes | None],
    workdir: Path,
    *,
    make_unreachable: Callable[[], Sender] | None = None,
) -> list[str]:
    """Run every clause that applies to the sender; return their names."""
    checked: list[str] = []
    sender = make_sender()
    first = _flow(workdir, _invoice("first"))  # "first" and "other": the same size on purpose,
    # so that a sender judging "already there" by size alone is caught
    async with sender:
        receipt = await sender.send(first)
        _receipt_names_the_delivery(receipt, sender, first)
        _expect(
            "delivers",
            delivered(first.remote_name) == first.path.read_bytes(),
            f"the partner does not hold {first.remote_name} with the bytes sent",
        )
        checked.append("delivers")

        said = await sender.check()
        _expect("check", isinstance(said, str) and bool(said), f"check() returned {said!r}")
        checked.append("check")

        if sender.capabilities.detects_resend:
            again = await sender.send(replace(first, resend=True))  # its outcome "unknown"
            _expect(
                "resend_recognised",
                again.already_delivered,
                "a resend of a delivered flow was not reported already_delivered",
            )
            _expect(
                "resend_recognised",
                delivered(first.remote_name) == first.path.read_bytes(),
                "a resend changed what the partner holds",
            )
            checked.append("resend_recognised")

        if sender.capabilities.atomic_rename:
            other = _flow(workdir, _invoice("other"), remote_name=first.remote_name)
            try:
                await sender.send(other)
            except TransferError as exc:
                _expect(
                    "never_overwrites",
                    not exc.retryable,
                    f"a name conflict must be permanent, got a retryable {exc.reason}",
                )
            else:
                raise ContractBroken(
                    "never_overwrites: other bytes under a delivered remote name were accepted"
                )
            _expect(
                "never_overwrites",
                delivered(first.remote_name) == first.path.read_bytes(),
                "the delivered file was replaced",
            )
            checked.append("never_overwrites")

    # A closed sender may be used again (the daemon keeps one per connection for months).
    second = _flow(workdir, _invoice("second"))
    async with sender:
        await sender.send(second)
    _expect(
        "reusable_after_close",
        delivered(second.remote_name) == second.path.read_bytes(),
        "a sender entered again after leaving did not deliver",
    )
    checked.append("reusable_after_close")

    if make_unreachable is not None:
        lost = make_unreachable()
        try:
            async with lost:
                await lost.send(_flow(workdir, _invoice("lost")))
        except TransferError as exc:
            _expect(
                "unreachable_is_retryable",
                exc.retryable,
                f"an unreachable partner must be retryable, got {exc.reason}",
            )
        except Exception as exc:
            raise ContractBroken(
                f"unreachable_is_retryable: {type(exc).__name__} leaked instead of a "
                "protocols.errors.TransferError"
            ) from exc
        else:
            raise ContractBroken("unreachable_is_retryable: a send to nowhere succeeded")
        checked.append("unreachable_is_retryable")
    return checked


def _receipt_names_the_delivery(receipt: Receipt, sender: Sender, flow: Outbound) -> None:
    _expect(
        "receipt",
        receipt.protocol == sender.protocol and receipt.remote_name == flow.remote_name,
        f"receipt {receipt.protocol}/{receipt.remote_name} for {flow.remote_name}",
    )
    _expect("receipt", not receipt.already_delivered, "a first send said already_delivered")
