"""The data_dir lock: one daemon per data_dir with the SQLite journal; with a shared journal,
several nodes share data_dir but never two daemons under one node name."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.daemon import Gateway
from gateway.datadir import LOCK_FILE, NODES_DIR, DataDirLocked, lock_data_dir
from tests.gateway.harness import memory_config


def test_alone_a_second_daemon_is_refused_naming_the_first(tmp_path: Path) -> None:
    """With its SQLite journal, a daemon owns data_dir: another is refused, with the pid."""
    first = lock_data_dir(tmp_path)
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}") as refused:
        lock_data_dir(tmp_path)
    assert "[journal] url" in str(refused.value)
    first.close()
    lock_data_dir(tmp_path).close()  # the lock went with the first


def test_nodes_of_a_shared_journal_share_data_dir_one_daemon_per_name(tmp_path: Path) -> None:
    """Two node names run side by side; a second daemon under a name in use is refused with
    one sentence naming the node and what to change."""
    a, b = lock_data_dir(tmp_path, "node-a"), lock_data_dir(tmp_path, "node-b")
    with pytest.raises(DataDirLocked) as refused:
        lock_data_dir(tmp_path, "node-a")
    message = str(refused.value)
    assert "'node-a'" in message and "node_name" in message and "\n" not in message
    assert (tmp_path / NODES_DIR / "node-a.lock").read_text().strip() == str(os.getpid())
    a.close()
    lock_data_dir(tmp_path, "node-a").close()
    b.close()


def test_a_lone_daemon_and_nodes_of_a_shared_journal_exclude_each_other(tmp_path: Path) -> None:
    """A daemon with its own SQLite journal and nodes of a shared one would both claim the
    same outboxes: whichever came second is refused."""
    node = lock_data_dir(tmp_path, "node-a")
    with pytest.raises(DataDirLocked, match="a node of a shared journal"):
        lock_data_dir(tmp_path)
    node.close()
    alone = lock_data_dir(tmp_path)
    with pytest.raises(DataDirLocked, match=f"own SQLite journal \\(pid {os.getpid()}\\)"):
        lock_data_dir(tmp_path, "node-a")
    alone.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=64
    )
)
def test_a_node_name_never_puts_its_lock_outside_the_nodes_folder(
    tmp_path: Path, name: str
) -> None:
    """Whatever the node name (slashes, dots, spaces), its lock file is in data_dir/nodes."""
    lock = lock_data_dir(tmp_path, name)
    try:
        inside = {p.resolve().parent for p in (tmp_path / NODES_DIR).iterdir()}
        assert inside == {(tmp_path / NODES_DIR).resolve()}
        assert {p.name for p in tmp_path.iterdir()} <= {LOCK_FILE, NODES_DIR}
    finally:
        lock.close()


def test_the_daemon_refuses_a_node_name_already_running(tmp_path: Path) -> None:
    """`raccord run` on a shared journal, under a node name another daemon holds: refused
    before anything is opened."""
    config = memory_config(
        tmp_path,
        "datadir-lock",
        gateway_extra='node_name = "node-a"\n\n[journal]\nurl = "postgresql://raccord@db/raccord"',
    )
    held = lock_data_dir(config.gateway.data_dir, "node-a")
    try:
        with pytest.raises(DataDirLocked, match="as node 'node-a'"):
            asyncio.run(Gateway(config).run(asyncio.Event()))
    finally:
        held.close()
