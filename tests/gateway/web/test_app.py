"""The web console served by a running gateway (memory sender), driven over HTTP: nothing is
seen without signing in, every POST needs the session's CSRF token, the cookie is locked down,
retry is `raccord retry`'s own rules and is logged with the user, no secret is ever shown."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.config import Config
from gateway.daemon import Gateway
from gateway.folders import Layout
from gateway.journal import FlowRow, JournalDB, journal_target
from gateway.sandbox import pki
from gateway.web.app import Console
from gateway.web.auth import hash_password
from tests.conftest import sample
from tests.e2e.sshd import free_port
from tests.gateway.harness import drop, memory_config_text, running, until

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)


def invoice(number: str) -> bytes:
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())


def web_config(tmp_path: Path, *, public_read: bool = False, journal: str = "") -> Config:
    """A memory gateway with the console; its journal on PostgreSQL if ``journal`` is a URL."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "raccord.toml"
    bucket = f"web-{time.monotonic_ns()}"
    shared = f'node_name = "node-a"\n\n[journal]\nurl = "{journal}"' if journal else ""
    path.write_text(
        memory_config_text(tmp_path / "data", bucket, gateway_extra=shared)
        + f'\n[web]\nlisten = "127.0.0.1:{free_port()}"\npublic_read = {str(public_read).lower()}\n'
        + f'\n[web.users.alice]\npassword_hash = "{HASH}"\n'
    )
    return config_module.load(path)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


class Browser:
    """An HTTP client that keeps cookies, as a browser would, on the console of ``gateway``."""

    def __init__(self, gateway: Gateway, session: aiohttp.ClientSession) -> None:
        assert gateway.console is not None and gateway.console.port
        self.base = f"http://127.0.0.1:{gateway.console.port}"
        self.http = session

    async def get(self, path: str) -> tuple[int, str, Any]:
        async with self.http.get(self.base + path, allow_redirects=False) as response:
            return response.status, await response.text(), response

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str, Any]:
        async with self.http.post(self.base + path, data=data, allow_redirects=False) as response:
            return response.status, await response.text(), response

    async def sign_in(self, user: str = "alice", password: str = PASSWORD) -> int:
        _, html, _ = await self.get("/login")
        status, _, _ = await self.post(
            "/login", {"user": user, "password": password, "csrf": csrf_of(html), "next": "/"}
        )
        return status


@asynccontextmanager
async def console(config: Config) -> AsyncIterator[tuple[Gateway, Browser]]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies from an IP address (127.0.0.1) too
    async with running(config) as gateway, aiohttp.ClientSession(cookie_jar=jar) as session:
        yield gateway, Browser(gateway, session)


def test_nothing_is_shown_before_sign_in(tmp_path: Path) -> None:
    async def main() -> None:
        async with console(web_config(tmp_path)) as (_, browser):
            for path in (
                "/",
                "/flows",
                "/flows.csv",
                "/rejected",
                "/connections",
                "/certificates",
                "/flows/x",
                "/flows/x/file",
            ):
                status, _, response = await browser.get(path)
                assert status == 303, path
                assert response.headers["Location"].startswith("/login?next="), path
            status, html, _ = await browser.get("/login")
            assert status == 200 and 'type="password"' in html

    asyncio.run(main())


def test_sign_in_sets_a_locked_down_cookie_and_a_wrong_password_is_refused(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with console(web_config(tmp_path)) as (_, browser):
            assert await browser.sign_in(password="wrong password") == 401
            assert await browser.sign_in(user="mallory") == 401
            _, html, _ = await browser.get("/login")
            status, _, response = await browser.post(
                "/login", {"user": "alice", "password": PASSWORD, "csrf": csrf_of(html)}
            )
            assert status == 303
            cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie never returns
            status, html, response = await browser.get("/flows")
            assert status == 200 and "alice" in html
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]

    asyncio.run(main())


def test_a_post_without_the_csrf_token_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with console(web_config(tmp_path)) as (_, browser):
            await browser.get("/login")
            status, _, _ = await browser.post("/login", {"user": "alice", "password": PASSWORD})
            assert status == 403
            status, _, _ = await browser.post(
                "/login", {"user": "alice", "password": PASSWORD, "csrf": "forged"}
            )
            assert status == 403
            assert await browser.sign_in() == 303
            status, _, _ = await browser.post("/flows/anything/retry", {"csrf": "forged"})
            assert status == 403

    asyncio.run(main())


def rows(config: Config) -> list[FlowRow]:
    """The flows of the journal ``config`` names (SQLite or PostgreSQL)."""
    target = journal_target(config)
    if isinstance(target, Path) and not target.exists():
        return []
    db = JournalDB(target)
    try:
        return db.search()
    finally:
        db.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_flows_are_found_by_invoice_number_and_a_duplicate_is_retried_with_force(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """The same file dropped twice: the second is refused as a duplicate (error/). In the
    console it is found by its invoice number, retried with --force, and goes out; the retry
    is logged as web.retry with the user. The same on a shared PostgreSQL journal, where the
    table names the node of each flow."""
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else ""
    config = web_config(tmp_path, journal=url)

    async def main() -> None:
        async with console(config) as (_, browser):
            drop(config, "a.xml", invoice("WEB-0001"))
            await until(lambda: any(r.state == "sent" for r in rows(config)), what="first sent")
            drop(config, "again.xml", invoice("WEB-0001"))
            await until(lambda: any(r.state == "error" for r in rows(config)), what="duplicate")
            (failed,) = [r for r in rows(config) if r.state == "error"]
            assert failed.reason == "duplicate"
            assert await browser.sign_in() == 303
            status, html, _ = await browser.get("/flows?q=WEB-0001")
            assert status == 200 and "a.xml" in html and "again.xml" in html
            assert (">node-a</td>" in html) == bool(url)
            status, html, _ = await browser.get("/flows?q=again")
            assert "again.xml" in html and ">a.xml<" not in html
            status, html, _ = await browser.get(f"/flows/{failed.flow_id}")
            assert f"/flows/{failed.flow_id}/retry" in html and "duplicate" in html
            status, html, _ = await browser.get(f"/flows/{failed.flow_id}/retry")
            assert 'name="force"' in html
            status, _, _ = await browser.post(
                f"/flows/{failed.flow_id}/retry", {"csrf": csrf_of(html), "force": "yes"}
            )
            assert status == 303
            await until(
                lambda: [r.state for r in rows(config) if r.flow_id == failed.flow_id] == ["sent"],
                what="the retried flow sent",
            )
            status, html, _ = await browser.get(f"/flows/{failed.flow_id}")
            assert "raccord retry --force" in html
            # a second retry of a flow no longer in error is refused with the CLI's words
            status, html, _ = await browser.post(
                f"/flows/{failed.flow_id}/retry", {"csrf": csrf_of(html)}
            )
            assert status == 409 and "only flows in error can be retried" in html
            status, body, response = await browser.get("/flows.csv?q=WEB-0001")
            assert status == 200 and response.content_type == "text/csv"
            assert body.count("WEB-0001") == 2
            status, body, _ = await browser.get(f"/flows/{failed.flow_id}/file")
            assert status == 200 and "WEB-0001" in body

    with capture_logs() as events:
        asyncio.run(main())
    retried = [e for e in events if e["event"] == "web.retry"]
    assert [(e["user"], e["force"], "refused" in e) for e in retried] == [
        ("alice", True, False),
        ("alice", False, True),
    ]


def test_public_read_shows_pages_but_not_files_nor_actions(tmp_path: Path) -> None:
    config = web_config(tmp_path, public_read=True)

    async def main() -> None:
        async with console(config) as (_, browser):
            drop(config, "a.xml", invoice("WEB-0002"))
            await until(lambda: any(r.state == "sent" for r in rows(config)), what="sent")
            (row,) = rows(config)
            for path in (
                "/",
                "/flows",
                "/rejected",
                "/connections",
                "/certificates",
                f"/flows/{row.flow_id}",
            ):
                status, html, _ = await browser.get(path)
                assert status == 200, path
                assert HASH not in html and "password_hash" not in html
            status, _, response = await browser.get(f"/flows/{row.flow_id}/file")
            assert status == 303 and response.headers["Location"].startswith("/login")

    asyncio.run(main())


def test_pages_speak_the_browsers_language_and_the_switch_wins(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(web_config(tmp_path, public_read=True)) as gateway:
            assert gateway.console is not None
            base = f"http://127.0.0.1:{gateway.console.port}"
            headers = {"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"}
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(headers=headers, cookie_jar=jar) as http:
                async with http.get(base + "/flows") as response:
                    html = await response.text()
                assert 'lang="fr"' in html and "Suivi des flux" in html
                async with http.get(base + "/lang/en?next=/flows") as response:
                    html = await response.text()
                assert 'lang="en"' in html and "Flows" in html

    asyncio.run(main())


def test_a_flows_story_says_which_node_made_each_move_in_both_languages(
    tmp_path: Path,
) -> None:
    """Several nodes may share a journal: the flow's page names the node that last moved it
    and the node of each step of its story (in French and in English), and the CSV export
    has a node column."""
    path = tmp_path / "raccord.toml"
    path.write_text(
        web_config(tmp_path, public_read=True)
        .path.read_text()
        .replace("[gateway]\n", '[gateway]\nnode_name = "node-web-1"\n', 1)
    )
    config = config_module.load(path)

    async def main() -> None:
        async with console(config) as (_, browser):
            drop(config, "a.xml", invoice("WEB-0003"))
            await until(lambda: any(r.state == "sent" for r in rows(config)), what="sent")
            (row,) = rows(config)
            for lang, word in (("fr", "Nœud"), ("en", "Node")):
                await browser.get(f"/lang/{lang}?next=/")
                status, html, _ = await browser.get(f"/flows/{row.flow_id}")
                assert status == 200 and f"<dt>{word}</dt><dd>node-web-1</dd>" in html
                story = html.split("<tbody>")[1].split("</tbody>")[0]
                steps = story.count("<tr>")
                assert steps >= 4 and story.count('<td class="small">node-web-1</td>') == steps
            _, body, _ = await browser.get("/flows.csv")
            header, line = body.splitlines()[:2]
            assert header.endswith(",node") and line.endswith(",node-web-1")

    asyncio.run(main())


def test_a_file_outside_the_data_folder_is_never_served(tmp_path: Path) -> None:
    """Even if the journal named one (a damaged or tampered journal): 404, not its bytes."""
    config = web_config(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_text("not for the browser")

    async def main() -> None:
        async with console(config) as (_, browser):
            drop(config, "a.xml", invoice("WEB-0003"))
            await until(lambda: any(r.state == "sent" for r in rows(config)), what="sent")
            (row,) = rows(config)
            db = JournalDB(Layout(config.gateway.data_dir).journal)
            try:
                db._db.execute(
                    "UPDATE flows SET final_path=? WHERE flow_id=?", (str(secret), row.flow_id)
                )
            finally:
                db.close()
            assert await browser.sign_in() == 303
            status, body, _ = await browser.get(f"/flows/{row.flow_id}/file")
            assert status == 404 and "not for the browser" not in body

    asyncio.run(main())


def test_under_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    pair = pki.issue("127.0.0.1", days=2)
    key = pki.write_key(pair, tmp_path / "web.key")
    certificate = pki.write_certificates([pair.certificate], tmp_path / "web.crt", "pem")
    path = tmp_path / "raccord.toml"
    path.write_text(
        memory_config_text(tmp_path / "data", f"tls-{time.monotonic_ns()}")
        + f'\n[web]\nlisten = "127.0.0.1:{free_port()}"\n'
        + f'certificate = "{certificate}"\nkey = "{key}"\n'
    )
    config = config_module.load(path)

    async def main() -> None:
        async with running(config) as gateway:
            assert gateway.console is not None
            url = f"https://127.0.0.1:{gateway.console.port}/login"
            async with (
                aiohttp.ClientSession() as http,
                http.get(url, ssl=False) as response,  # a self-signed test certificate
            ):
                assert response.status == 200
                cookie = response.headers["Set-Cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie

    asyncio.run(main())


def test_a_reload_adds_users_and_signs_out_removed_ones(tmp_path: Path) -> None:
    config = web_config(tmp_path)

    async def main() -> None:
        async with console(config) as (gateway, browser):
            assert await browser.sign_in() == 303
            assert (await browser.get("/flows"))[0] == 200
            text = config.path.read_text().replace("[web.users.alice]", "[web.users.bob]")
            config.path.write_text(text)
            gateway.request_reload()
            await until(lambda: gateway.config is not config, what="the reload")
            status, _, response = await browser.get("/flows")
            assert status == 303 and response.headers["Location"].startswith("/login")
            assert await browser.sign_in("bob") == 303
            assert await browser.sign_in("alice") == 401

    asyncio.run(main())


def test_a_taken_address_stops_raccord_run_with_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "raccord.toml"
        path.write_text(
            memory_config_text(tmp_path / "data", f"taken-{time.monotonic_ns()}")
            + f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    err = done.stderr
    assert f"web.listen 127.0.0.1:{port}: cannot listen there" in err
    assert "Traceback" not in err


def test_with_a_shared_journal_the_flows_table_has_a_node_column(
    tmp_path: Path, postgres_url: str
) -> None:
    """Several nodes share the journal ([journal] url, a real PostgreSQL): the flows table
    names the node that last moved each flow; alone (SQLite), it has no such column."""
    config = web_config(tmp_path, public_read=True)
    shared = web_config(tmp_path / "shared", public_read=True, journal=postgres_url)
    for seen in (config, shared):
        db = JournalDB(journal_target(seen), node="node-b")
        db.insert("F1", "qualif-mem", "f.xml", "/spool/f.xml")
        db.close()

    async def table(seen: Config) -> str:
        console = Console(seen)
        await console.start()
        try:
            url = f"http://127.0.0.1:{console.port}/flows"
            headers = {"Accept-Language": "fr"}
            async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as page:
                return (await page.text()).split("<thead>")[1].split("</table>")[0]
        finally:
            await console.stop()

    alone, together = asyncio.run(table(config)), asyncio.run(table(shared))
    assert "Nœud" not in alone and "node-b" not in alone
    assert '<th scope="col">Nœud</th>' in together and ">node-b</td>" in together
