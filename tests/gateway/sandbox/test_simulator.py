"""The simulated partner's answers, read back with raccord's own parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import lots
from flows.returns import ReturnFlow, parse
from gateway.sandbox.chorus import Desk, Rules, answer
from tests.gateway.returns.test_returns import invoice

RULES = Rules({"FSO1100A": "complete"}, reject_pattern="REJ")


def lot(tmp_path: Path, numbers: list[str]) -> bytes:
    target = tmp_path / "lot.tar.gz"
    members: list[tuple[str, lots.Content]] = [(f"{n}.xml", invoice(n)) for n in numbers]
    lots.pack(members, target, "tar.gz")
    return target.read_bytes()


def read(tmp_path: Path, data: bytes) -> ReturnFlow:
    path = tmp_path / "answer.xml"
    path.write_bytes(data)
    return parse(path)


@pytest.mark.parametrize(
    ("mode", "flow_code", "invoice_codes"),
    [
        ("complete", "93", {"F-REJ-2": "05"}),
        ("partial", "96", {"F-1": "01", "F-REJ-2": "05", "F-3": "01"}),
    ],
)
def test_one_bad_invoice_under_each_mode(
    tmp_path: Path, mode: str, flow_code: str, invoice_codes: dict[str, str]
) -> None:
    data = lot(tmp_path, ["F-1", "F-REJ-2", "F-3"])
    ret = read(
        tmp_path,
        answer(
            "X_20261123T100000Z-00aa01.tar.gz",
            data,
            Rules({"FSO1100A": mode}, reject_pattern="REJ"),
        ),
    )
    assert ret.flow_ids == ("20261123T100000Z-00aa01",)
    assert [s.code for s in ret.flow_statuses] == [flow_code]
    assert "F-REJ-2" in (ret.flow_statuses[0].errors[0].label or "")
    assert {s.invoice_number: s.code for s in ret.invoice_statuses} == invoice_codes


def test_a_clean_deposit_is_received_and_each_invoice_deposited(tmp_path: Path) -> None:
    ret = read(tmp_path, answer("one.xml", invoice("F-9"), RULES))
    assert [s.code for s in ret.flow_statuses] == ["90"]
    assert [(s.invoice_number, s.code) for s in ret.invoice_statuses] == [("F-9", "01")]


def test_garbage_fails_the_flow_with_a_reason(tmp_path: Path) -> None:
    ret = read(tmp_path, answer("bad.tar.gz", b"\x1f\x8b garbage", RULES))
    (flow,) = ret.flow_statuses
    assert flow.code == "93" and "archive illisible" in (flow.errors[0].label or "")
    ret = read(tmp_path, answer("bad.xml", b"<Invoice><oops", RULES))
    assert [s.code for s in ret.flow_statuses] == ["93"] and ret.invoice_statuses == ()


def test_the_desk_answers_each_deposit_once_and_never_shows_half_a_file(tmp_path: Path) -> None:
    deposits, returns = tmp_path / "depot", tmp_path / "retrait"
    deposits.mkdir()
    returns.mkdir()
    (deposits / "A_20261123T100000Z-00aa02.xml").write_bytes(invoice("F-1"))
    (deposits / ".A_20261123T100000Z-00aa03.xml.part").write_bytes(b"<Inv")  # still uploading
    desk = Desk(deposits, returns, RULES)
    assert desk.answer_new() == 1
    assert desk.answer_new() == 0
    (only,) = returns.iterdir()
    assert only.name.startswith("FEN1200A_0001_") and not only.name.startswith(".")
    assert read(tmp_path, only.read_bytes()).flow_ids == ("20261123T100000Z-00aa02",)
