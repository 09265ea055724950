"""Local stand-ins for what alerts are sent to: a webhook endpoint and an SMTP server, both on
127.0.0.1, recording what they receive. The SMTP side speaks just enough of RFC 5321 for
smtplib (EHLO, MAIL, RCPT, DATA with dot-unstuffing, QUIT) and checks the order of commands."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web

from gateway.ops.httpserver import serve


@dataclass
class Webhook:
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        async def take(request: web.Request) -> web.Response:
            self.received.append(json.loads(await request.read()))
            self.headers.append(dict(request.headers))
            return web.Response(status=self.status, text="noted\n")

        app = web.Application()
        app.router.add_post("/hook", take)
        self._runner, self.port = await serve(app, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 mailbox.test ESMTP")
        sender: str | None = None
        recipients: list[str] = []
        greeted = False
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                greeted = True
                say("250 mailbox.test")
            elif verb == "MAIL" and greeted:
                sender, recipients = line.split(":", 1)[1].strip().strip("<>"), []
                say("250 OK")
            elif verb == "RCPT" and sender is not None:
                recipients.append(line.split(":", 1)[1].strip().strip("<>"))
                say("250 OK")
            elif verb == "DATA" and recipients:
                say("354 end with <CRLF>.<CRLF>")
                await writer.drain()
                lines = []
                while (data := await reader.readline()) != b".\r\n":
                    lines.append(data[1:] if data.startswith(b"..") else data)
                parsed = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                assert isinstance(parsed, EmailMessage)
                self.messages.append(parsed)
                self.envelopes.append((sender or "", recipients))
                say("250 queued")
            elif verb == "QUIT":
                say("221 bye")
                await writer.drain()
                break
            elif verb in ("RSET", "NOOP"):
                say("250 OK")
            else:
                say("503 bad sequence of commands")
            await writer.drain()
        writer.close()
