"""The PeSIT requester pulling return flows: one by one, each acknowledged only once stored,
a read cut short resumed from the sync point secured, what is over the limit left with the
partner."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.sandbox.pesit_partner import PesitResponder
from protocols.errors import (
    FileTooLarge,
    TransferError,
)
from protocols.pesit.sender import PesitSender
from protocols.settings import SettingsError
from tests.protocols.pesit.test_sender import _parse, _responder, _settings

RETURN_FILES = ("FEN1200A", "FEN1201A")


def _offer(responder: PesitResponder, name: str, data: bytes, age: int = 0) -> Path:
    path = responder.returns / name
    path.write_bytes(data)
    os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
    return path


def test_return_files_are_pulled_one_by_one_and_forgotten_only_once_acknowledged(
    tmp_path: Path,
) -> None:
    first, second, third = os.urandom(20_000), os.urandom(5), os.urandom(9_000)
    got: list[tuple[str, bytes, bool]] = []

    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            offered = [
                _offer(responder, "FEN1200A_0001.xml", first, 0),
                _offer(responder, "FEN1200A_0002.xml", second, 1),
                _offer(responder, "FEN1201A_0001.xml", third, 2),
            ]
            _offer(responder, "CSO1100A_0001.xml", b"not asked for")
            settings = _settings(responder, return_files=RETURN_FILES)
            async with PesitSender(settings) as sender:
                assert sender.capabilities.receives_returns
                local = tmp_path / "pulled"
                while (remote := await sender.next_return(local, 1 << 20)) is not None:
                    held = sum(p.exists() for p in offered)
                    assert remote.size == local.stat().st_size
                    assert await sender.acknowledge_return(remote) == "acknowledged"
                    got.append(
                        (remote.name, local.read_bytes(), held > sum(p.exists() for p in offered))
                    )
            assert responder.violations == []
            assert sorted(p.name for p in responder.returns.iterdir()) == ["CSO1100A_0001.xml"]

    asyncio.run(scenario())
    # the names take turns: FEN1200A, then FEN1201A, then FEN1200A again
    assert got == [
        ("FEN1200A_0001.xml", first, True),
        ("FEN1201A_0001.xml", third, True),
        ("FEN1200A_0002.xml", second, True),
    ]


def test_a_released_return_stays_with_the_partner_and_comes_again(tmp_path: Path) -> None:
    data = os.urandom(10_000)

    async def scenario() -> bytes:
        async with _responder(tmp_path) as responder:
            path = _offer(responder, "FEN1200A_0001.xml", data)
            settings = _settings(responder, return_files=RETURN_FILES)
            async with PesitSender(settings) as sender:
                local = tmp_path / "pulled"
                remote = await sender.next_return(local, 1 << 20)
                assert remote is not None
                await sender.release_return(remote)
                assert path.exists()
                again = await sender.next_return(local, 1 << 20)
                assert again is not None and again.name == remote.name
                await sender.acknowledge_return(again)
            assert not path.exists()
            assert responder.violations == []
            return local.read_bytes()

    assert asyncio.run(scenario()) == data


def test_a_read_cut_short_resumes_from_the_last_sync_point_it_secured(tmp_path: Path) -> None:
    data = os.urandom(30_000)  # sync points every 4 KB
    cut = 10_000  # after sync points 1 and 2 (8192 bytes secured)

    async def scenario() -> tuple[Any, ...]:
        async with _responder(tmp_path) as responder:
            _offer(responder, "FEN1200A_0001.xml", data)
            responder.faults.drop_read_after = cut
            settings = _settings(responder, return_files=RETURN_FILES)
            async with PesitSender(settings) as sender:
                local = tmp_path / "pulled"
                remote = await sender.next_return(local, 1 << 20)
                assert remote is not None and remote.size == len(data)
                await sender.acknowledge_return(remote)
            assert responder.violations == []
            assert responder.dropped_at is not None and cut <= responder.dropped_at < 3 * 4096
            resent = responder.sent_bytes - responder.dropped_at
            return responder.read_restarts, resent, local.read_bytes()

    restarts, resent, pulled = asyncio.run(scenario())
    assert pulled == data
    assert [point for _, point in restarts] == [2]
    assert resent == len(data) - 2 * 4096  # nothing before the restart point came twice


def test_a_read_cut_short_is_resumed_by_the_next_process(tmp_path: Path) -> None:
    """No reconnection in the first process (restarts = 0): it gives up, as a daemon that is
    stopped would; a new sender (the restarted daemon) resumes from the sync point kept beside
    the partial file, and the bytes before it do not come again."""
    data = os.urandom(30_000)
    local = tmp_path / "inbox" / ".pull.download"
    local.parent.mkdir()

    async def scenario() -> tuple[Any, ...]:
        async with _responder(tmp_path) as responder:
            _offer(responder, "FEN1200A_0001.xml", data)
            responder.faults.drop_read_after = 10_000
            settings = _settings(responder, return_files=RETURN_FILES, restarts=0)
            async with PesitSender(settings) as first:
                with pytest.raises(TransferError):
                    await first.next_return(local, 1 << 20)
            kept = json.loads((local.parent / ".pull.download.pesit.json").read_text())
            assert (kept["select"], kept["point"], kept["secured"]) == ("FEN1200A", 2, 8192)
            async with PesitSender(settings) as second:
                remote = await second.next_return(local, 1 << 20)
                assert remote is not None and remote.name == "FEN1200A_0001.xml"
                await second.acknowledge_return(remote)
                assert await second.next_return(local, 1 << 20) is None
            assert responder.violations == []
            assert not (local.parent / ".pull.download.pesit.json").exists()
            resent = responder.sent_bytes - (responder.dropped_at or 0)
            return responder.read_restarts, resent

    restarts, resent = asyncio.run(scenario())
    assert local.read_bytes() == data
    assert [point for _, point in restarts] == [2]
    assert resent == len(data) - 8192


def test_a_return_over_the_limit_is_left_with_the_partner(tmp_path: Path) -> None:
    data = os.urandom(50_000)

    async def scenario() -> bytes:
        async with _responder(tmp_path) as responder:
            path = _offer(responder, "FEN1200A_big.xml", data)
            settings = _settings(responder, return_files=RETURN_FILES)
            async with PesitSender(settings) as sender:
                local = tmp_path / "pulled"
                with pytest.raises(FileTooLarge, match=r"FEN1200A_big\.xml.*max_file_size") as err:
                    await sender.next_return(local, 20_000)
                assert not err.value.retryable
                assert path.exists()
                remote = await sender.next_return(local, 1 << 20)  # the limit raised
                assert remote is not None
                await sender.acknowledge_return(remote)
            return local.read_bytes()

    assert asyncio.run(scenario()) == data


def test_nothing_waiting_is_no_error(tmp_path: Path) -> None:
    async def scenario() -> Any:
        async with _responder(tmp_path) as responder:
            settings = _settings(responder, return_files=RETURN_FILES)
            async with PesitSender(settings) as sender:
                found = await sender.next_return(tmp_path / "pulled", 1 << 20)
            assert responder.violations == [] and responder.connections == 1
            return found

    assert asyncio.run(scenario()) is None


def test_without_return_files_nothing_is_polled(tmp_path: Path) -> None:
    sender = PesitSender(_parse({}))
    assert not sender.capabilities.receives_returns
    assert _parse({"return_files": ["FEN1200A"]}).return_files == ("FEN1200A",)
    for bad in (["FEN1200A", ""], "FEN1200A", ["é"], ["X" * 77]):
        with pytest.raises(SettingsError, match="return_files"):
            _parse({"return_files": bad})
