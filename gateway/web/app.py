"""The console's HTTP side: aiohttp routes rendering Jinja2 templates (docs/web.md).

Who sees what: every page needs a signed-in user unless ``[web] public_read`` is set; file
downloads and actions always do. Every POST carries the session's CSRF token; the session
cookie is ``HttpOnly``, ``SameSite=Strict`` and, under TLS, ``Secure``. Pages are sent with a
Content-Security-Policy that allows nothing from elsewhere (the console works offline).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from gateway import logs
from gateway.config import Config, ConfigError, WebSettings
from gateway.folders import Layout
from gateway.journal import STATES, JournalDB, JournalTarget, journal_target
from gateway.journal.connection import Connection
from gateway.ops import certificates
from gateway.ops.httpserver import serve
from gateway.web import auth, charts, queries
from gateway.web.i18n import LANGUAGES, Words, choose
from gateway.web.throttle import Throttle

log = logs.get()

COOKIE = "raccord_session"
LANG_COOKIE = "raccord_lang"
Health = dict[str, Callable[[], Awaitable[str | None]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SESSION: web.RequestKey[auth.Session] = web.RequestKey("session", auth.Session)
_NEW_SESSION: web.RequestKey[bool] = web.RequestKey("new_session", bool)
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CSV_COLUMNS = (
    "created_at",
    "flow_id",
    "original_name",
    "connection",
    "interface_code",
    "invoice_number",
    "state",
    "remote_name",
    "status_code",
    "status_label",
    "rejected",
    "collateral",
    "attempts",
    "reason",
    "message",
    "node",
)
#: How many rows a CSV download holds at most (a filter narrows it).
CSV_LIMIT = 100_000


def _templates() -> jinja2.Environment:
    """The console's pages: escaped, and failing on a name the page was not given."""
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["when"] = _when
    templates.filters["plain"] = _plain
    return templates


class Console:
    """The web console of a running gateway (``[web]``); ``start()`` binds, ``stop()`` ends."""

    def __init__(self, config: Config, health: Health | None = None) -> None:
        assert config.web is not None
        self.config = config
        self.settings: WebSettings = config.web
        self.layout = Layout(config.gateway.data_dir)
        self.health = health or {}
        self.sessions = auth.Sessions()
        self.throttle = Throttle()  # failed sign-ins: kept across reloads
        self.reader = queries.Reader(journal_target(config, self.layout))
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self.templates = _templates()

    def reconfigure(self, config: Config) -> None:
        """Users, ``public_read`` and connections as the reloaded configuration says (the
        address and TLS files need a restart of the console: see the daemon)."""
        assert config.web is not None
        before = self.settings.users
        gone = {name for name, hashed in before.items() if config.web.users.get(name) != hashed}
        self.config, self.settings = config, config.web
        if gone and self.sessions.end_users(gone):  # removed, or a new password: signed out
            log.info("web.signed_out", users=sorted(gone), why="configuration reloaded")

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self.overview)
        app.router.add_get("/flows", self.flows)
        app.router.add_get("/flows.csv", self.flows_csv)
        app.router.add_get("/flows/{flow_id}", self.flow)
        app.router.add_get("/flows/{flow_id}/file", self.flow_file)
        app.router.add_get("/flows/{flow_id}/retry", self.retry_form)
        app.router.add_post("/flows/{flow_id}/retry", self.retry)
        app.router.add_get("/returns/{return_id}/file", self.return_file)
        app.router.add_get("/rejected", self.rejected)
        app.router.add_get("/connections", self.connections)
        app.router.add_get("/certificates", self.certificates)
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/lang/{lang}", self.language)
        app.router.add_static("/static", Path(__file__).parent / "static", append_version=False)
        return app

    async def start(self) -> None:
        """Listen on ``[web] listen``.

        Raises:
            ConfigError: the TLS files cannot be used, or the address cannot be listened on
                (the sentence names the key); ``raccord run`` exits 2 with it.
        """
        where = self.config.path
        context = None
        if self.settings.certificate is not None and self.settings.key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(self.settings.certificate, self.settings.key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{where}: web.certificate {self.settings.certificate} and web.key "
                    f"{self.settings.key} cannot be used for TLS: {exc.strerror or exc}"
                ) from None
        try:
            self._runner, self.port = await serve(
                self.application(), self.settings.host, self.settings.port, context
            )
        except OSError as exc:
            raise ConfigError(
                f"{where}: web.listen {self.settings.host}:{self.settings.port}: cannot listen "
                f"there: {exc.strerror or exc}"
            ) from None
        log.info(
            "web.started",
            url=f"{'https' if context else 'http'}://{self.settings.host}:{self.port}/",
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.reader.close)

    # -- who may see what -------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        fresh = session is None
        if session is None:
            session = self.sessions.new()
        request[_SESSION] = session
        public = request.path in ("/login",) or request.path.startswith("/lang/")
        if request.method == "POST":
            form = await request.post()
            given = form.get("csrf")
            if fresh or not auth.same_token(
                given if isinstance(given, str) else None, session.csrf
            ):
                log.warning("web.csrf_refused", path=request.path, user=session.user)
                response: web.StreamResponse = self._page(
                    request, "error.html", {"message": "forbidden"}, status=403
                )
                return self._finish(request, response, session, fresh)
        elif session.user is None and not public and not self.settings.public_read:
            response = _see(f"/login?{urlencode({'next': request.path_qs})}")
            return self._finish(request, response, session, fresh)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                response = self._page(request, "error.html", {"message": "not_found"}, 404)
            else:  # a redirect or a refusal, sent as a response (raised only to get here)
                response = web.Response(status=exc.status, headers=exc.headers, text=exc.text)
        except Exception:  # a page that fails says so; the daemon carries on
            log.exception("web.page_failed", path=request.path)
            response = self._page(request, "error.html", {"message": "page_failed"}, 500)
        return self._finish(request, response, request[_SESSION], fresh)

    def _finish(
        self,
        request: web.Request,
        response: web.StreamResponse,
        session: auth.Session,
        fresh: bool,
    ) -> web.StreamResponse:
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        if fresh or request.get(_NEW_SESSION):
            response.set_cookie(
                COOKIE,
                session.token,
                httponly=True,
                samesite="Strict",
                secure=self.settings.tls,
                path="/",
            )
        return response

    def _user(self, request: web.Request) -> str | None:
        return request[_SESSION].user

    def _need_user(self, request: web.Request) -> str:
        user = self._user(request)
        if user is None:
            raise web.HTTPSeeOther(f"/login?{urlencode({'next': request.path_qs})}")
        return user

    def _page(
        self, request: web.Request, template: str, values: dict[str, Any], status: int = 200
    ) -> web.Response:
        lang = choose(request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language"))
        session = request.get(_SESSION)
        html = self.templates.get_template(template).render(
            t=Words(lang),
            lang=lang,
            other_lang=next(x for x in LANGUAGES if x != lang),
            user=session.user if session else None,
            csrf=session.csrf if session else "",
            path=request.path_qs,
            **{"failed": False, "name": "", "refused": None, **values},
        )
        return web.Response(text=html, content_type="text/html", status=status)

    # -- sign in and out --------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        return self._page(request, "login.html", {"next": _local(request.query.get("next"))})

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        target = _local(str(form.get("next", "/")))
        page: dict[str, Any] = {"next": target, "name": name}
        keys, wait = self.throttle.check(request.remote, name)
        if wait:  # refused before the password is looked at: a guess costs nothing here
            log.warning("web.login_throttled", user=name[:64], address=request.remote, wait=wait)
            refused = self._page(request, "login.html", page | {"throttled": wait}, 429)
            return _retry_after(refused, wait)
        known = self.settings.users.get(name)
        # Checked off the loop (scrypt takes tens of ms), and as long for an unknown user.
        ok = await asyncio.to_thread(auth.verify_password, password, known or auth.dummy_hash())
        if not (ok and known):
            log.warning("web.sign_in_failed", user=name[:64])
            return self._page(request, "login.html", page | {"failed": True}, 401)
        self.throttle.succeeded(keys)
        self.sessions.end(request[_SESSION])
        request[_SESSION] = self.sessions.new(name)  # a new token: no fixation
        request[_NEW_SESSION] = True
        log.info("web.signed_in", user=name)
        return _see(target)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request[_SESSION]
        if session.user:
            log.info("web.signed_out", user=session.user)
        self.sessions.end(session)
        request[_SESSION] = self.sessions.new()
        request[_NEW_SESSION] = True
        return _see("/login")

    async def language(self, request: web.Request) -> web.StreamResponse:
        lang = request.match_info["lang"]
        response = _see(_local(request.query.get("next")))
        if lang in LANGUAGES:
            response.set_cookie(LANG_COOKIE, lang, samesite="Strict", max_age=365 * 86400)
        return response

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        now = datetime.now(UTC)
        data = await self.reader.run(queries.overview, now)
        health = {}
        for name, check in self.health.items():
            try:
                health[name] = await check()
            except Exception as exc:
                health[name] = f"{type(exc).__name__}: {exc}"
        words = Words(
            choose(request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language"))
        )
        labels = {
            "sent": words("sent"),
            "failed": words("failed"),
            "rejected": words("rejected_short"),
        }
        return self._page(
            request,
            "overview.html",
            {
                **data,
                "health": health,
                "per_day": charts.bars(data["days"], labels, words("per_day")),
                "per_hour": charts.bars(data["hours"], labels, words("per_hour"), tick_every=6),
            },
        )

    def _filters(self, request: web.Request) -> queries.Filters:
        query = request.query

        def value(name: str) -> str | None:
            return (query.get(name) or "").strip()[:200] or None

        state = value("state")
        return queries.Filters(
            connection=value("connection"),
            state=state if state in STATES else None,
            status=value("status"),
            since=_day(value("since")),
            until=_day(value("until")),
            text=value("q"),
            oldest_first=query.get("order") == "asc",
        )

    async def flows(self, request: web.Request) -> web.StreamResponse:
        filters = self._filters(request)
        page = _int(request.query.get("page"))
        started = asyncio.get_running_loop().time()
        rows = await self.reader.run(queries.flows, filters, page)
        elapsed = asyncio.get_running_loop().time() - started
        more = len(rows) > queries.PAGE
        query = filters.query()
        response = self._page(
            request,
            "flows.html",
            {
                "rows": rows[: queries.PAGE],
                "filters": filters,
                "page": page,
                "previous": urlencode({**query, "page": page - 1}) if page > 0 else None,
                "next": urlencode({**query, "page": page + 1}) if more else None,
                "csv": urlencode(query),
                "states": STATES,
                "connection_names": [c.name for c in self.config.connections],
                # which node last moved each flow: a column when several nodes share the journal
                "nodes": self.config.journal.url is not None,
            },
        )
        response.headers["Server-Timing"] = f"query;dur={elapsed * 1000:.1f}"
        return response

    async def flows_csv(self, request: web.Request) -> web.StreamResponse:
        filters = self._filters(request)
        # Queried and written in the reader's thread: 100,000 rows would hold the loop up.
        text = await self.reader.run(_csv, filters)
        return web.Response(
            text=text,
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="raccord-flows.csv"'},
        )

    async def flow(self, request: web.Request) -> web.StreamResponse:
        flow_id = request.match_info["flow_id"]
        data = await self.reader.run(queries.flow, flow_id)
        if data is None:
            return self._page(request, "error.html", {"message": "no_flow"}, 404)
        return self._page(request, "flow.html", {"flow": data})

    async def flow_file(self, request: web.Request) -> web.StreamResponse:
        self._need_user(request)
        found = await self.reader.run(queries.file_of_flow, request.match_info["flow_id"])
        return self._download(request, found)

    async def return_file(self, request: web.Request) -> web.StreamResponse:
        self._need_user(request)
        found = await self.reader.run(queries.file_of_return, request.match_info["return_id"])
        return self._download(request, found)

    def _download(self, request: web.Request, found: tuple[str, str] | None) -> web.StreamResponse:
        """A file the journal names, served only from raccord's own folders."""
        if found is None:
            raise web.HTTPNotFound()
        path, name = Path(found[0]).resolve(), found[1]
        root = self.layout.data_dir.resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "file"
        return web.FileResponse(
            path,
            headers={
                "Content-Disposition": f'attachment; filename="{safe}"',
                "Content-Type": "application/octet-stream",
            },
        )

    async def retry_form(self, request: web.Request) -> web.StreamResponse:
        self._need_user(request)
        data = await self.reader.run(queries.flow, request.match_info["flow_id"])
        if data is None:
            return self._page(request, "error.html", {"message": "no_flow"}, 404)
        return self._page(request, "retry.html", {"flow": data})

    async def retry(self, request: web.Request) -> web.StreamResponse:
        user = self._need_user(request)
        flow_id = request.match_info["flow_id"]
        form = await request.post()
        force = form.get("force") == "yes"
        try:
            # The very function `raccord retry` calls, with a connection of its own in a thread.
            target = journal_target(self.config, self.layout)
            done = await asyncio.to_thread(_requeue, target, flow_id, force)
        except LookupError as exc:
            log.warning("web.retry", user=user, flow_id=flow_id, force=force, refused=exc.args[0])
            data = await self.reader.run(queries.flow, flow_id)
            if data is None:
                return self._page(request, "error.html", {"message": "no_flow"}, 404)
            return self._page(
                request, "retry.html", {"flow": data, "refused": exc.args[0]}, status=409
            )
        log.info("web.retry", user=user, flow_id=flow_id, force=force, outcome=done)
        return _see(f"/flows/{flow_id}")

    async def rejected(self, request: web.Request) -> web.StreamResponse:
        filters = self._filters(request)
        rows = await self.reader.run(
            queries.rejected, filters.connection, filters.since, filters.until
        )
        return self._page(
            request,
            "rejected.html",
            {
                "rows": rows,
                "filters": filters,
                "connection_names": [c.name for c in self.config.connections],
            },
        )

    async def connections(self, request: web.Request) -> web.StreamResponse:
        from gateway.cli.commands import connection_sheet  # the `raccord connections` view itself

        today = datetime.now(UTC).date()
        sheets = []
        for conn in self.config.connections:
            sheet = connection_sheet(conn, today)
            sheet.update(await self.reader.run(queries.connection_activity, conn.name))
            sheets.append(sheet)
        return self._page(request, "connections.html", {"sheets": sheets})

    async def certificates(self, request: web.Request) -> web.StreamResponse:
        config = self.config
        try:
            records = await asyncio.to_thread(
                certificates.report, config, config.gateway.warn_days, datetime.now(UTC)
            )
            problem = None
        except Exception as exc:  # e.g. a file gone since the start: say which
            records, problem = [], str(exc)
        return self._page(request, "certificates.html", {"records": records, "problem": problem})


def _csv(db: Connection, filters: queries.Filters) -> str:
    """The flows ``filters`` select (up to :data:`CSV_LIMIT`) as CSV."""
    rows = queries.flows(db, filters, 0, CSV_LIMIT)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows[:CSV_LIMIT]:
        status = row["status"] or {}
        values = {
            **row,
            "status_code": status.get("code"),
            "status_label": status.get("label"),
            "rejected": status.get("rejected"),
            "collateral": status.get("collateral"),
        }
        writer.writerow([_cell(values.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


def _requeue(journal: JournalTarget, flow_id: str, force: bool) -> str:
    from gateway.flow.dispatcher import requeue

    db = JournalDB(journal)
    try:
        return requeue(db, flow_id, force=force)
    finally:
        db.close()


def _retry_after(response: web.Response, seconds: int) -> web.Response:
    response.headers["Retry-After"] = str(seconds)
    return response


def _see(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _local(target: str | None) -> str:
    """A redirect target on this site only (never ``//elsewhere`` or ``https://…``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _day(value: str | None) -> str | None:
    """An ISO date or date-time as the journal writes them, or None if it is neither."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
        return datetime.fromisoformat(value).astimezone(UTC).isoformat(timespec="milliseconds")
    except ValueError:
        return None


def _int(value: str | None) -> int:
    try:
        return max(0, min(int(value or 0), 100_000))
    except ValueError:
        return 0


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _plain(value: Any) -> str:
    """A receipt's value as text: nested ones (the partner's answer) as JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _when(value: str | None) -> str:
    """A journal time (ISO 8601 UTC) for people: ``2026-12-07 05:12:03``."""
    if not value:
        return ""
    return value.replace("T", " ")[:19]
