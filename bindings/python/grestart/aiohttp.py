"""Runs an aiohttp application on a grestart listener (``pip install grestart[aiohttp]``).

::

    app = web.Application()
    ...
    grestart.aiohttp.run_app(app, ("127.0.0.1", 8080))

On hand-over the old generation stops accepting (the queued connections are
the successor's), lets every request in flight finish, answers the next
request of each keep-alive connection with ``Connection: close``, and closes
only connections that stay idle for ``idle_grace`` seconds; it returns as soon
as no connection is left. Nothing a client sent is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

import grestart

from ._handover import Listener, check_grace, connections_finished, listener, stop_accepting

__all__ = ["serve", "run_app"]


async def _close_when_draining(_request: web.BaseRequest, response: web.StreamResponse) -> None:
    if grestart.draining():
        # The hook runs once the headers are made: say it, and do it.
        response.headers["Connection"] = "close"
        response.force_close()


async def serve(app: web.Application, where: Listener, *, idle_grace: float = 2.0, **runner_options: Any) -> None:
    """Serves ``app`` on ``where`` (a socket from :func:`grestart.listen`, or an
    address for it), calls :func:`grestart.ready`, and returns once this
    process has drained: then call :func:`grestart.shutdown`.
    ``runner_options`` go to ``aiohttp.web.AppRunner``."""
    idle_grace = check_grace(idle_grace)
    sock = listener(where)
    app.on_response_prepare.append(_close_when_draining)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        grestart.ready()
        await grestart.shutdown_requested()
        await stop_accepting(sock)
        await site.stop()  # closes our copy of the listener; the successor accepts the queue
        server = runner.server
        await connections_finished(lambda: len(server.connections) if server else 0, idle_grace)
    finally:
        await runner.cleanup()  # closes what stayed idle, waits for what is in flight


def run_app(app: web.Application, where: Listener, *, idle_grace: float = 2.0, **runner_options: Any) -> None:
    """:func:`serve` in a new event loop, then :func:`grestart.shutdown`."""
    asyncio.run(serve(app, where, idle_grace=idle_grace, **runner_options))
    grestart.shutdown()
