"""The web console in a real browser (Debian's chromium, driven by Playwright) against a real
``raccord run`` and the built-in partner simulator (``raccord simulate``), as a person would
check it: sign in, find a flow by invoice number, open it, tell the rejected invoice from its
collateral ones, retry a failed flow and see it go out; a POST without the CSRF token is
refused; a signed-out browser sees the sign-in page only.

Screenshots of each page are saved under ``$RACCORD_SCREENSHOTS`` if set, else in the test's
temporary folder (``screenshots/``)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.folders import Layout
from gateway.journal import JournalDB, JournalTarget, PostgresTarget
from gateway.sandbox.demo import (
    AS2_CONNECTION,
    CONNECTION,
    REJECT_PATTERN,
    as2_documents,
    drop,
    sample_documents,
    wait_until_settled,
)
from gateway.web.auth import hash_password
from tests.e2e.daemon import daemon
from tests.e2e.sshd import free_port

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "s3cret-for-the-console"

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def chromium() -> Iterator[object]:
    if not CHROMIUM.exists():
        message = (
            "chromium is not installed (Debian package chromium); "
            "scripts/install-and-test installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Path]:
    """``raccord simulate --dir``: the partner, and the configuration that reaches it."""
    folder = tmp_path / "sim"
    out = tmp_path / "simulate.out"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "simulate", "--dir", str(folder)],
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C to stop." not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        yield folder
    finally:
        process.terminate()
        process.wait(timeout=30)


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RACCORD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def poll(what: str, done: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.1)


def state_of(journal: JournalTarget, flow_id: str) -> str | None:
    db = JournalDB(journal)
    try:
        row = db.get(flow_id)
        return row.state if row else None
    finally:
        db.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_console_in_a_real_browser(
    tmp_path: Path,
    simulator: Path,
    chromium: object,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """Once on the node's SQLite journal, once on a shared PostgreSQL journal (a real server),
    where the flows table also names the node that moved each flow."""
    config = simulator / "raccord.toml"
    port = free_port()
    text = config.read_text()
    layout = Layout(simulator / "data")
    journal: JournalTarget = layout.journal
    if database == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        journal = PostgresTarget(url)
        text = text.replace("[gateway]\n", '[gateway]\nnode_name = "node-e2e"\n', 1)
        text += f'\n[journal]\nurl = "{url}"\n'
    config.write_text(
        text
        + f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
        + f'\n[web.users.alice]\npassword_hash = "{hash_password(PASSWORD)}"\n'
    )
    base = f"http://127.0.0.1:{port}"
    pictures = shots(tmp_path)
    token = secrets.token_hex(3).upper()
    documents = sample_documents(token)
    as2 = as2_documents(token)
    rejected_number = f"DEMO-{token}-UBL-{REJECT_PATTERN}3"

    with daemon(config, tmp_path / "raccord.log") as running:
        for name, data in documents.items():
            drop(layout.outbox(CONNECTION), name, data)
        for name, data in as2.items():
            drop(layout.outbox(AS2_CONNECTION), name, data)
        wait_until_settled(journal, len(documents) + len(as2), 120)
        # The same AS2 file again: refused as a duplicate, to error/ — the failed flow.
        name, data = next(iter(as2.items()))
        drop(layout.outbox(AS2_CONNECTION), "again-" + name, data)

        def duplicates() -> list[str]:
            db = JournalDB(journal)
            try:
                return [r.flow_id for r in db.in_states(("error",)) if r.reason == "duplicate"]
            finally:
                db.close()

        running.wait_for("the duplicate in error", lambda: bool(duplicates()), timeout=60)
        (duplicate_id,) = duplicates()

        signed_out = chromium.new_context()  # type: ignore[attr-defined]
        page = signed_out.new_page()
        page.goto(base + "/flows")
        assert "/login" in page.url and page.locator("input[type=password]").count() == 1
        assert "ubl-invoice" not in page.content()
        page.screenshot(path=pictures / "01-sign-in.png", full_page=True)
        signed_out.close()

        context = chromium.new_context(locale="en-GB")  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(base + "/")
        page.fill("#user", "alice")
        page.fill("#password", PASSWORD)
        page.keyboard.press("Enter")  # the form works from the keyboard
        page.wait_for_url(base + "/")
        page.screenshot(path=pictures / "02-overview.png", full_page=True)
        assert "<svg" in page.content()

        page.goto(base + "/flows")
        page.screenshot(path=pictures / f"03-flows-{database}.png", full_page=True)
        headers = page.locator("table.flows thead th").all_inner_texts()
        assert ("Node" in headers) == (database == "postgresql"), headers
        if database == "postgresql":
            assert "node-e2e" in page.locator("table.flows tbody").inner_text()
        page.fill("input[name=q]", rejected_number)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*q=.*"))
        page.screenshot(path=pictures / "04-flows-found.png", full_page=True)
        rows = page.locator("table.flows tbody tr")
        assert rows.count() >= 1
        assert any("ubl-invoice-rej3.xml" in row for row in rows.all_inner_texts())
        page.click("text=ubl-invoice-rej3.xml")
        page.screenshot(path=pictures / "05-flow.png", full_page=True)
        assert "packed" in page.content()
        page.click("dd a[href^='/flows/']")  # the lot that carried it
        page.screenshot(path=pictures / "06-lot.png", full_page=True)
        invoices = page.locator("table.invoices tbody tr")
        text = invoices.all_inner_texts()
        cells = [t.split("\t") for t in text]
        (guilty,) = [row for row in cells if row[0] == rejected_number]
        collateral = [row for row in cells if row[0] != rejected_number]
        assert "at fault" in guilty[2] and "collateral" not in guilty[2]
        assert collateral and all("collateral" in row[2] for row in collateral)
        assert all(rejected_number in row[3] for row in collateral)  # the reason names it
        assert page.locator("text=Resubmitted as").count() >= 1

        page.goto(base + "/rejected")
        page.screenshot(path=pictures / "07-rejected.png", full_page=True)
        assert "collateral" in page.content() and "at fault" in page.content()
        page.goto(base + "/connections")
        page.screenshot(path=pictures / "08-connections.png", full_page=True)
        assert CONNECTION in page.content()
        page.goto(base + "/certificates")
        page.screenshot(path=pictures / "09-certificates.png", full_page=True)

        # A POST without the CSRF token, from the signed-in browser itself: refused.
        refused = context.request.post(f"{base}/flows/{duplicate_id}/retry", form={"force": "yes"})
        assert refused.status == 403
        assert state_of(journal, duplicate_id) == "error"

        page.goto(f"{base}/flows?state=error")
        page.click(f"text=again-{name}")
        page.click("text=Retry…")
        page.screenshot(path=pictures / "10-retry.png", full_page=True)
        page.check("input[name=force]")
        page.click("button:has-text('Confirm')")
        poll("the retried flow sent", lambda: state_of(journal, duplicate_id) == "sent")
        page.reload()
        page.screenshot(path=pictures / "11-retried.png", full_page=True)
        assert "raccord retry --force" in page.content()
        retried = [e for e in running.events("web.retry") if e.get("flow_id") == duplicate_id]
        assert retried and retried[0]["user"] == "alice"

        page.goto(base + "/lang/fr?next=/flows")
        page.screenshot(path=pictures / "12-flows-fr.png", full_page=True)
        assert "Suivi des flux" in page.content()
        context.close()
        status, _ = running.stop()
        assert status == 0
