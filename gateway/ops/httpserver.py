"""Serving an aiohttp application on one address: the AS2 receiver, the metrics endpoint, the
simulator's AS2 side (and the tests' webhook)."""

from __future__ import annotations

import ssl

from aiohttp import web


async def serve(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host``:``port`` (0: any free port); the runner (``cleanup()`` stops
    it) and the port actually bound."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    return runner, bound
