"""Runs an ASGI application under uvicorn on a grestart listener (the
``uvicorn`` extra: ``pip install "./bindings/python[uvicorn]"`` in the
repository, or the wheel ``scripts/build-wheel`` makes with ``[uvicorn]``; see
README.md, "Install").

::

    grestart.uvicorn.run(app, ("127.0.0.1", 8080))

On hand-over the old generation stops accepting (the queued connections are
the successor's), lets every request in flight finish, answers the next
request of each keep-alive connection with ``Connection: close``, and closes
only connections that stay idle for ``idle_grace`` seconds (default
:data:`grestart.DEFAULT_IDLE_GRACE`); it returns as soon as no connection is
left. Nothing a client sent is lost. (uvicorn's own shutdown closes idle and
just-accepted connections at once.)
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Optional

import uvicorn

import grestart

from ._drain import CountedConnections, Listener, check_grace, connections_finished, listener, stop_accepting

__all__ = ["serve", "run"]

_CLOSE = (b"connection", b"close")


class _CloseWhenDraining:
    """ASGI middleware: while draining, every response says ``Connection:
    close``, and uvicorn closes the connection after it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message: dict) -> None:
            if message["type"] == "http.response.start" and grestart.draining():
                message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            await send(message)

        return await self.app(scope, receive, send_closing)


class _Server(uvicorn.Server):
    """uvicorn's server, ready once it listens, draining the grestart way."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, idle_grace: float) -> None:
        super().__init__(config)
        # Each protocol adds itself to this set when its connection is made
        # and discards itself when it is lost (a WebSocket's replaces its
        # HTTP one): the core counts the connections as work in flight.
        self.counted = self.server_state.connections = CountedConnections()
        self.sock = sock
        self.idle_grace = idle_grace
        self.drain_task: Optional[asyncio.Task] = None

    async def startup(self, sockets: Optional[list] = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            grestart.ready()
            self.drain_task = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        """Once this process must drain: stops accepting, waits for the
        connections (or the idle grace), then lets uvicorn exit."""
        await grestart.shutdown_requested()
        await stop_accepting(self.sock)
        for server in self.servers:
            server.close()  # our copy of the listener; the successor accepts the queue
        await connections_finished(self.idle_grace)
        self.should_exit = True  # uvicorn closes what stayed idle, waits for the rest


async def serve(app: Any, where: Listener, *, idle_grace: float = grestart.DEFAULT_IDLE_GRACE, **config: Any) -> None:
    """Serves the ASGI ``app`` on ``where`` (a socket from :func:`grestart.listen`,
    or an address for it), calls :func:`grestart.ready` once uvicorn listens,
    and returns once this process has drained: then call
    :func:`grestart.shutdown`. ``config`` goes to ``uvicorn.Config``."""
    idle_grace = check_grace(idle_grace)
    sock: socket.socket = listener(where)
    server = _Server(uvicorn.Config(_CloseWhenDraining(app), **config), sock, idle_grace)
    try:
        await server.serve(sockets=[sock])
    finally:
        if server.drain_task is not None:
            server.drain_task.cancel()
        server.counted.let_go()


def run(app: Any, where: Listener, *, idle_grace: float = grestart.DEFAULT_IDLE_GRACE, **config: Any) -> None:
    """:func:`serve` in a new event loop, then :func:`grestart.shutdown`."""
    asyncio.run(serve(app, where, idle_grace=idle_grace, **config))
    grestart.shutdown()
