"""Packing lots and reading them back, including archives nobody should trust."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from flows import lots


@pytest.mark.parametrize("packaging", ["tar.gz", "zip"])
def test_a_lot_round_trips_and_packs_the_same_bytes_twice(tmp_path: Path, packaging: str) -> None:
    first = tmp_path / "a.xml"
    first.write_bytes(b"<Invoice>1</Invoice>")
    members: list[tuple[str, lots.Content]] = [("a.xml", first), ("b.xml", b"<Invoice>2</Invoice>")]
    one, two = tmp_path / "one", tmp_path / "two"
    lots.pack(members, one, packaging)
    lots.pack(members, two, packaging)
    assert one.read_bytes() == two.read_bytes()
    assert lots.packaging_of(one.read_bytes()[:4]) == packaging
    assert lots.read_members(one.read_bytes()) == [
        ("a.xml", b"<Invoice>1</Invoice>"),
        ("b.xml", b"<Invoice>2</Invoice>"),
    ]
    by_name = dict(lots.read_members(one.read_bytes()))
    assert by_name["b.xml"] == b"<Invoice>2</Invoice>"
    assert "c.xml" not in by_name


def test_member_names_are_safe_and_distinct() -> None:
    assert lots.member_names(["a.xml", "A.xml", "a.xml", "f ac/ture.xml", "noext", "noext"]) == [
        "a.xml",
        "A-2.xml",
        "a-3.xml",
        "f_ac_ture.xml",
        "noext",
        "noext-2",
    ]


def test_pack_refuses_what_would_make_a_bad_lot(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 to 500 invoices"):
        lots.pack([], tmp_path / "x", "zip")
    with pytest.raises(ValueError, match="not a plain safe name"):
        lots.pack([("../x.xml", b"x")], tmp_path / "x", "zip")
    with pytest.raises(ValueError, match="unknown packaging"):
        lots.pack([("x.xml", b"x")], tmp_path / "x", "rar")


def tar_with(*infos: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in infos:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_hostile_archives_are_refused_with_a_reason() -> None:
    assert lots.read_members(tar_with((tarfile.TarInfo("ok.xml"), b"x"))) == [("ok.xml", b"x")]
    with pytest.raises(lots.LotError, match="not a plain file name"):
        lots.read_members(tar_with((tarfile.TarInfo("../../etc/passwd"), b"x")))
    with pytest.raises(lots.LotError, match="not a plain file name"):
        lots.read_members(tar_with((tarfile.TarInfo("/abs.xml"), b"x")))
    link = tarfile.TarInfo("link.xml")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(lots.LotError, match="not a regular file"):
        lots.read_members(tar_with((link, b"")))
    many = tar_with(*[(tarfile.TarInfo(f"f{i}.xml"), b"x") for i in range(lots.MAX_MEMBERS + 1)])
    with pytest.raises(lots.LotError, match="more than 500 members"):
        lots.read_members(many)
    with pytest.raises(lots.LotError, match="once unpacked"):
        lots.read_members(tar_with((tarfile.TarInfo("big.xml"), b"x" * 2000)), max_bytes=1000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("sub/inner.xml", b"x")
    with pytest.raises(lots.LotError, match="not a plain file name"):
        lots.read_members(buffer.getvalue())
    with pytest.raises(lots.LotError, match=r"corrupt tar\.gz"):
        lots.read_members(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(lots.LotError, match=r"not a tar\.gz or zip"):
        lots.read_members(b"<Invoice/>")


# -- limits at their bounds, and the running total of unpacked bytes --------------------------


def zip_with(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_lot_of_exactly_max_members_and_max_bytes_is_read() -> None:
    full = [(tarfile.TarInfo(f"f{i}.xml"), b"x") for i in range(lots.MAX_MEMBERS)]
    assert len(lots.read_members(tar_with(*full))) == lots.MAX_MEMBERS
    names = [(f"f{i}.xml", b"x") for i in range(lots.MAX_MEMBERS)]
    assert len(lots.read_members(zip_with(*names))) == lots.MAX_MEMBERS
    with pytest.raises(lots.LotError, match="more than 500 members"):
        lots.read_members(zip_with(*names, ("one-more.xml", b"x")))
    exact = tar_with((tarfile.TarInfo("a.xml"), b"x" * 600), (tarfile.TarInfo("b.xml"), b"y" * 400))
    assert [n for n, _ in lots.read_members(exact, max_bytes=1000)] == ["a.xml", "b.xml"]
    zipped = zip_with(("a.xml", b"x" * 600), ("b.xml", b"y" * 400))
    assert len(lots.read_members(zipped, max_bytes=1000)) == 2


@pytest.mark.parametrize("packaging", ["tar", "zip"])
def test_the_bytes_unpacked_are_counted_over_every_member(packaging: str) -> None:
    """Each member under the bound, their sum over it: refused (a zip bomb spread thin)."""
    parts = [(f"f{i}.xml", b"x" * 400) for i in range(3)]
    data = (
        tar_with(*[(tarfile.TarInfo(n), d) for n, d in parts])
        if packaging == "tar"
        else zip_with(*parts)
    )
    with pytest.raises(lots.LotError, match="more than 1000 bytes once unpacked"):
        lots.read_members(data, max_bytes=1000)
    assert len(lots.read_members(data, max_bytes=1200)) == 3


def test_parent_names_and_zip_folders_are_refused() -> None:
    with pytest.raises(lots.LotError, match="not a plain file name"):
        lots.read_members(tar_with((tarfile.TarInfo(".."), b"x")))
    with pytest.raises(lots.LotError, match="member 'sub/' is a folder"):
        lots.read_members(zip_with(("sub/", b"")))


def test_packed_lots_are_plain_readable_files_with_fixed_metadata(tmp_path: Path) -> None:
    """Same bytes every time (fixed times, modes, format), readable by any tool."""
    import gzip

    target = tmp_path / "lot.tar.gz"
    lots.pack([("a.xml", b"<a/>")], target, "tar.gz")
    raw = target.read_bytes()
    assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"  # no file name, no time in gzip
    tar_bytes = gzip.decompress(raw)
    assert b"ustar" in tar_bytes[:512]
    with tarfile.open(target) as tar:
        (info,) = tar.getmembers()
        assert (info.name, info.mode, info.mtime, info.uid, info.size) == ("a.xml", 0o644, 0, 0, 4)
    assert len(tar_bytes) % 512 == 0 and tar_bytes[257:262] == b"ustar"
    zipped = tmp_path / "lot.zip"
    lots.pack([("a.xml", b"<a/>" * 100)], zipped, "zip")
    with zipfile.ZipFile(zipped) as archive:
        (entry,) = archive.infolist()
        assert entry.date_time == (1980, 1, 1, 0, 0, 0)
        assert entry.external_attr >> 16 == 0o644
        assert entry.compress_type == zipfile.ZIP_DEFLATED and entry.compress_size < 400


def test_lot_names_are_recognised_for_their_flow_only() -> None:
    flow = "20261123T101500Z-00a1b2"
    assert lots.is_lot_name(flow, f"lot-{flow}.tar.gz") and lots.is_lot_name(
        flow, f"lot-{flow}.zip"
    )
    assert not lots.is_lot_name(flow, f"lot-{flow}.tgz")
    assert not lots.is_lot_name(flow, "lot-20261123T101500Z-ffffff.zip")


def test_member_names_number_the_last_extension_only() -> None:
    assert lots.member_names(["a.b.xml", "a.b.xml", "noext", "noext"]) == [
        "a.b.xml",
        "a.b-2.xml",
        "noext",
        "noext-2",
    ]


def test_complete_mode_lots_take_only_invoices_with_the_four_facts() -> None:
    from flows.analysis import Analysis
    from flows.codes import Format

    whole = Analysis(
        Format.UBL_INVOICE,
        1,
        "s",
        invoice_number="F-1",
        issue_date="2026-11-23",
        supplier_id="S",
        buyer_id="B",
    )
    assert lots.missing_for_complete(whole) == []
    assert lots.missing_for_complete(Analysis(Format.UBL_INVOICE, 1, "s")) == [
        "invoice number",
        "issue date",
        "supplier identifier",
        "buyer identifier",
    ]
    from dataclasses import replace

    assert lots.missing_for_complete(replace(whole, buyer_id="")) == ["buyer identifier"]
    assert lots.missing_for_complete(replace(whole, supplier_id=None)) == ["supplier identifier"]
