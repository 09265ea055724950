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
