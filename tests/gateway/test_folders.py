"""gateway.folders: no folder of the layout is a symbolic link, so that raccord never reads a
file from outside data_dir nor files one outside it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.cli.commands import main
from gateway.config import ConfigError
from gateway.folders import Layout, LinkedFolder
from tests.conftest import sample
from tests.gateway.harness import connection_toml, memory_config_text, run_raccord, running, until

CONN = "qualif-mem"
KINDS = ["outbox", "spool", "error", "rejected", "inbox", "sent"]


def configured(tmp_path: Path, data_dir: Path | None = None) -> Path:
    path = tmp_path / "raccord.toml"
    path.write_text(memory_config_text(data_dir or tmp_path / "data", "folders"))
    return path


def outside_with_an_invoice(tmp_path: Path) -> Path:
    """A folder outside data_dir holding an invoice that must never be read."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "private.xml").write_bytes(sample("ubl-invoice.xml"))
    return outside


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), at_parent=st.booleans())
def test_a_link_at_or_above_any_folder_of_the_layout_is_refused_naming_it(
    kind: str, at_parent: bool
) -> None:
    """Whichever folder of a connection is a link (or the folder above it), the refusal names
    the connection, that link and where it points."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        layout = Layout(root / "data")
        layout.create([CONN])
        target = root / "outside"
        target.mkdir()
        link = layout.data_dir / kind if at_parent else layout.data_dir / kind / CONN
        shutil.rmtree(link)  # the real folder, replaced by a link to the outside one
        link.symlink_to(target, target_is_directory=True)
        with pytest.raises(LinkedFolder) as refused:
            layout.refuse_links([CONN])
        message = str(refused.value)
        assert refused.value.link == link and refused.value.connection == CONN
        assert f"{link}" in message and f"(to {target})" in message
        assert f"the {kind}/ folder of {CONN}" in message and "replace the link" in message


def test_raccord_run_refuses_a_linked_outbox_in_one_sentence_and_reads_nothing(
    tmp_path: Path,
) -> None:
    """`raccord run` with its outbox a link to another folder does not start: exit 2, one
    sentence naming the connection and the link, and the file behind the link is untouched."""
    path = configured(tmp_path)
    outside = outside_with_an_invoice(tmp_path)
    Layout(tmp_path / "data").create([CONN])
    outbox = tmp_path / "data" / "outbox" / CONN
    outbox.rmdir()
    outbox.symlink_to(outside)
    done = run_raccord(path)
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"raccord: {path}: connection[{CONN}]: the outbox/ folder of {CONN}, {outbox}, is a "
        f"symbolic link (to {outside});"
    )
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert [p.name for p in outside.iterdir()] == ["private.xml"]
    assert not (tmp_path / "data" / "journal.sqlite").exists()


def test_raccord_check_refuses_an_outbox_under_a_linked_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raccord check` says the same when the link is above the outbox (data_dir/outbox)."""
    path = configured(tmp_path)
    outside = outside_with_an_invoice(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "outbox").symlink_to(outside)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"connection[{CONN}]: {tmp_path / 'data' / 'outbox'}, above the outbox/ folder" in err
    assert err.count("\n") == 1
    assert [p.name for p in outside.iterdir()] == ["private.xml"]


def test_data_dir_itself_may_be_a_link(tmp_path: Path) -> None:
    """data_dir is the root the operator chose: it may be a link (to another disk)."""
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "data").symlink_to(real)
    Layout(tmp_path / "data").create([CONN])
    assert config_module.load(configured(tmp_path)).gateway.data_dir == tmp_path / "data"


def test_a_reload_adding_a_connection_whose_outbox_is_a_link_is_refused(tmp_path: Path) -> None:
    """A reload is refused as a whole (the running configuration kept) when a connection it
    adds has a linked outbox: the folder behind it is never watched."""
    path = configured(tmp_path)
    config = config_module.load(path)
    outside = outside_with_an_invoice(tmp_path)
    second = tmp_path / "data" / "outbox" / "second-mem"

    async def scenario() -> list[str]:
        async with running(config) as gateway:
            second.symlink_to(outside)
            path.write_text(
                path.read_text()
                + connection_toml(
                    "second-mem", "memory", {"bucket": "folders-2"}, structure="00000000000231"
                )
            )
            with capture_logs() as events:
                gateway.request_reload()
                await until(
                    lambda: any(e["event"].startswith("config.reload") for e in events),
                    what="the reload's outcome",
                )
            assert gateway.config is config
            return [str(e.get("error")) for e in events if e["event"] == "config.reload_failed"]

    (error,) = asyncio.run(scenario())
    assert f"connection[second-mem]: the outbox/ folder of second-mem, {second}" in error
    assert [p.name for p in outside.iterdir()] == ["private.xml"]
    with pytest.raises(ConfigError, match="is a symbolic link"):
        config_module.load(path)


def test_a_folder_this_user_may_not_look_into_is_no_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`raccord check` by a user who may not enter data_dir loads the configuration (the
    daemon, which may, checks the links). Simulated: the tests run as root, whom permissions
    do not stop."""
    path = configured(tmp_path)
    real = Path.is_symlink

    def is_symlink(self: Path) -> bool:
        if self.name == "outbox":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_symlink", is_symlink)
    assert config_module.load(path).connections[0].name == CONN
