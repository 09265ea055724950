"""``raccord retry`` refuses what cannot succeed (exit 1, saying why) instead of saying
"queued again" for a flow that will land in error/ once more."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.testing import memory
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import deliver, memory_config, raccord_cli


def retry(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return raccord_cli(capsys, "retry", "--config", str(path), *args)


def test_a_duplicate_without_force_and_an_unchanged_bad_file_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory.BUCKETS.pop("retry-refused", None)
    config = memory_config(tmp_path, "retry-refused")
    found = deliver(
        config,
        {"a.xml": invoice("R-1"), "b.xml": invoice("R-1"), "c.xml": b"<Unknown/>"},
    )
    duplicate = next(r for r in found if r.reason == "duplicate")
    unknown = next(r for r in found if r.reason == "unknown_format")
    capsys.readouterr()  # the daemon's logs

    status, out, err = retry(config.path, capsys, duplicate.flow_id)
    assert (status, out) == (1, "")
    assert err.startswith(f"raccord: flow {duplicate.flow_id} (b.xml) is a duplicate")
    assert err.endswith(
        "; retrying would refuse it again: use raccord retry --force to send it anyway\n"
    )
    assert err.count("\n") == 1
    status, out, err = retry(config.path, capsys, unknown.flow_id)
    assert (status, out) == (1, "")
    assert err.startswith(
        f"raccord: flow {unknown.flow_id} (c.xml) is in error for unknown_format, which is "
        "the file's own content"
    )
    assert err.count("\n") == 1

    # --failed takes back what may succeed and says what it leaves: no error for that.
    status, _, err = retry(config.path, capsys, "--failed")
    assert status == 0 and err.count("\n") == 2

    # The operator fixed the file in error/: its new content deserves a try.
    assert unknown.final_path is not None
    Path(unknown.final_path).write_bytes(invoice("R-2"))
    status, out, _ = retry(config.path, capsys, unknown.flow_id)
    assert status == 0 and out.endswith("queued again\n")
