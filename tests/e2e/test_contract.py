"""The sender contract (protocols.testing.contract) run against every built-in sender — SFTP to
a real sshd, AS2 to the partner simulator, the memory sender — and the plugin example."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import config as config_module
from protocols.base import Outbound, Receipt
from protocols.errors import ConnectError
from protocols.sftp.sender import SftpSender
from protocols.testing import contract, memory
from tests.e2e.conftest import write_sftp_config
from tests.e2e.sshd import Sshd, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]


def held_in(folder: Path) -> Callable[[str], bytes | None]:
    """What the partner holds under a name, when its deliveries land in ``folder``."""

    def delivered(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.exists() else None

    return delivered


def test_sftp_keeps_the_contract(tmp_path: Path, sshd: Sshd) -> None:
    settings = config_module.load(write_sftp_config(tmp_path, sshd)).connections[0].settings

    delivered = held_in(sshd.upload_dir)
    checked = asyncio.run(
        contract.verify(
            lambda: SftpSender(settings),
            delivered,
            tmp_path,
            make_unreachable=lambda: SftpSender(replace(settings, port=free_port())),
        )
    )
    assert checked == [
        "delivers",
        "check",
        "resend_recognised",
        "never_overwrites",
        "reusable_after_close",
        "unreachable_is_retryable",
    ]
    assert not [p for p in sshd.upload_dir.iterdir() if p.name.startswith(".")]


def test_the_memory_sender_keeps_the_contract(tmp_path: Path) -> None:
    bucket = f"contract-{time.monotonic_ns()}"
    down = f"{bucket}-down"
    settings = memory.MemorySettings(bucket=bucket, delay=0.0)

    def unreachable() -> memory.MemorySender:
        memory.fail_next(down, ConnectError("no route to the partner"))
        return memory.MemorySender(replace(settings, bucket=down))

    checked = asyncio.run(
        contract.verify(
            lambda: memory.MemorySender(settings),
            memory.bucket(bucket).files.get,
            tmp_path,
            make_unreachable=unreachable,
        )
    )
    assert "never_overwrites" in checked and "unreachable_is_retryable" in checked


def test_the_plugin_example_keeps_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ROOT / "examples" / "raccord-folder" / "raccord_folder" / "__init__.py"
    spec = importlib.util.spec_from_file_location("raccord_folder", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "raccord_folder", module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    target = tmp_path / "out"
    target.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    delivered = held_in(target)
    checked = asyncio.run(
        contract.verify(lambda: module.FolderSender(module.FolderSettings(target)), delivered, work)
    )
    assert checked == [
        "delivers",
        "check",
        "resend_recognised",
        "never_overwrites",
        "reusable_after_close",
    ]


def test_a_sender_that_overwrites_is_caught(tmp_path: Path) -> None:
    """The suite can fail: a sender that replaces a delivered file breaks never_overwrites."""
    bucket = f"contract-bad-{time.monotonic_ns()}"

    class Overwriting(memory.MemorySender):
        async def send(self, flow: Outbound) -> Receipt:
            if not flow.resend:  # replaces whatever the partner holds under that name
                memory.bucket(bucket).files.pop(flow.remote_name, None)
            return await super().send(flow)

    with pytest.raises(contract.ContractBroken, match="never_overwrites"):
        asyncio.run(
            contract.verify(
                lambda: Overwriting(memory.MemorySettings(bucket=bucket, delay=0.0)),
                memory.bucket(bucket).files.get,
                tmp_path,
            )
        )


def test_as2_keeps_the_contract_with_the_simulated_partner(tmp_path: Path) -> None:
    """AS2 against the in-package partner simulator (raccord's AS2 code on both sides: the
    django-pyas2 and openssl tests are the outside opinion; this one checks the contract)."""
    from gateway.sandbox import pki
    from gateway.sandbox.as2_partner import As2Simulator
    from protocols.as2.sender import As2Sender
    from tests.as2_config import mirror, write_as2_config

    ours, theirs = pki.issue("MYCOMPANY AS2"), pki.issue("CTAIFEP AS2")
    port = free_port()
    config = write_as2_config(tmp_path, ours, theirs, url=f"http://127.0.0.1:{port}/")
    settings = config.connections[0].settings
    view = mirror(settings, theirs, ours)
    deposits = tmp_path / "partner" / "depot"
    work = tmp_path / "work"
    work.mkdir()

    delivered = held_in(deposits)

    async def scenario() -> list[str]:
        async with As2Simulator(deposits, tmp_path / "partner" / "retrait", view, port=port):
            return await contract.verify(
                lambda: As2Sender(settings),
                delivered,
                work,
                make_unreachable=lambda: As2Sender(
                    replace(settings, url=f"http://127.0.0.1:{free_port()}/")
                ),
            )

    assert asyncio.run(scenario()) == [
        "delivers",
        "check",
        "resend_recognised",
        "reusable_after_close",
        "unreachable_is_retryable",
    ]


def test_pesit_keeps_the_contract_with_the_strict_responder(tmp_path: Path) -> None:
    from gateway.sandbox.pesit_partner import Account, PesitResponder
    from protocols.pesit.sender import PesitSender, PesitSettings
    from protocols.settings import Secret

    async def scenario() -> list[str]:
        responder = PesitResponder(tmp_path / "partner", {"RACCORD": Account("pw")})
        async with responder:
            settings = PesitSettings(
                host="127.0.0.1",
                port=responder.port,
                requester="RACCORD",
                server=responder.server_id,
                password=Secret("pw", "literal"),
                timeout=5.0,
            )
            checked = await contract.verify(
                lambda: PesitSender(settings),
                held_in(responder.deposits),
                tmp_path,
                make_unreachable=lambda: PesitSender(replace(settings, port=free_port())),
            )
            assert responder.violations == []
            return checked

    assert asyncio.run(scenario()) == [
        "delivers",
        "check",
        "resend_recognised",
        "reusable_after_close",
        "unreachable_is_retryable",
    ]


def test_piste_keeps_the_contract_with_the_stand_in(tmp_path: Path) -> None:
    from gateway.sandbox.chorus import Rules
    from gateway.sandbox.piste_partner import PisteStandIn
    from protocols.piste.api import PisteSettings
    from protocols.piste.sender import PisteSender
    from protocols.settings import Secret

    async def scenario() -> list[str]:
        chorus = PisteStandIn(
            tmp_path / "chorus", Rules(), client_id="a", client_secret="b", login="c", password="d"
        )
        async with chorus:
            settings = PisteSettings(
                client_id=Secret("a", "literal"),
                client_secret=Secret("b", "literal"),
                technical_login=Secret("c", "literal"),
                technical_password=Secret("d", "literal"),
                oauth_url=chorus.oauth_url,
                api_url=chorus.api_url,
                timeout=5.0,
            )
            unreachable = f"http://127.0.0.1:{free_port()}"
            return await contract.verify(
                lambda: PisteSender(settings),
                held_in(chorus.root / "depot"),
                tmp_path,
                make_unreachable=lambda: PisteSender(
                    replace(settings, api_url=unreachable, oauth_url=unreachable + "/token")
                ),
            )

    # a deposit cannot be looked up by name through the API: no resend clause
    assert asyncio.run(scenario()) == [
        "delivers",
        "check",
        "reusable_after_close",
        "unreachable_is_retryable",
    ]
