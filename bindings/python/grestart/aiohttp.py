"""Runs an aiohttp application on a grestart listener (``pip install grestart[aiohttp]``).

::

    app = web.Application()
    ...
    grestart.aiohttp.run_app(app, ("127.0.0.1", 8080))

On hand-over the old generation stops accepting (the queued connections are
the successor's), lets every request in flight finish, and hands each idle
keep-alive connection to the successor, which serves its next request: no
connection is closed by a restart, and the old generation leaves as soon as
its last request is answered. Where the successor takes no connections (an
older grestart), it answers the next request of each connection with
``Connection: close`` and closes only connections idle for ``idle_grace``
seconds instead. Nothing a client sent is lost.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Optional, Set

from aiohttp import web

import grestart

from ._handover import Listener, check_grace, connections_finished, listener, stop_accepting

__all__ = ["serve", "run_app"]


class _Framing:
    """Where a connection's requests end, found in the bytes as they arrive:
    whether every byte received belongs to a whole request (a head, and the
    body its ``Content-Length`` gives). A chunked body, or anything it cannot
    frame, counts as never at a boundary, and so does a connection upgraded
    to another protocol (a WebSocket): that connection is closed at the drain
    as without hand-over rather than handed over with bytes lost."""

    def __init__(self) -> None:
        self.rest = bytearray()  # received, not yet a whole request
        self.body_left = 0  # bytes of the current request's body still to come
        self.unframed = False

    def feed(self, data: bytes) -> None:
        if self.unframed:
            return
        self.rest += data
        while True:
            if self.body_left:
                taken = min(self.body_left, len(self.rest))
                del self.rest[:taken]
                self.body_left -= taken
                if self.body_left:
                    return
            while self.rest[:2] == b"\r\n":  # blank lines between requests (RFC 9112 2.2)
                del self.rest[:2]
            end = self.rest.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.rest[:end]).lower()
            del self.rest[: end + 4]
            if b"\r\ntransfer-encoding:" in head or b"\r\nupgrade:" in head:
                # A chunked body, or another protocol (a WebSocket) from here on.
                self.unframed = True
                self.rest.clear()
                return
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                value = head[at + len(b"\r\ncontent-length:") :].split(b"\r\n", 1)[0].strip()
                if not value.isdigit():
                    self.unframed = True
                    return
                self.body_left = int(value)

    def at_boundary(self) -> bool:
        return not self.unframed and not self.rest and not self.body_left


class _Tracked(asyncio.Protocol):
    """aiohttp's handler for one connection, watched so that the drain knows
    when it is idle: waiting for its next request, no byte of one read.

    It reads three attributes of aiohttp's RequestHandler (``_waiter``,
    ``_messages``, ``_request_count``); without them (another aiohttp) no
    connection counts as idle and the drain closes as without hand-over."""

    def __init__(self, handler: Any, tracked: Set["_Tracked"]) -> None:
        self.handler = handler
        self.tracked = tracked
        self.transport: Optional[asyncio.Transport] = None
        # The bytes received since the end of the last whole request: aiohttp's
        # parser (llhttp, whose state Python cannot see) holds them, and a
        # successor would never get them. Only a connection with none is idle.
        self.framing = _Framing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tracked.add(self)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.framing.feed(data)
        self.handler.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.handler.eof_received()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.tracked.discard(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def waiting(self) -> bool:
        waiter = getattr(self.handler, "_waiter", None)
        return waiter is not None and not waiter.done() and not getattr(self.handler, "_messages", True)

    def hand_over(self) -> Optional[bool]:
        """Hands the connection over if it is idle: True if it did, False if
        no successor takes connections, None if it is not idle."""
        transport = self.transport
        if (
            transport is None
            or transport.is_closing()
            or not self.framing.at_boundary()
            or transport.get_write_buffer_size() > 0  # an answer still on its way
            or getattr(self.handler, "_message_tail", b"")
            or not self.waiting()
        ):
            return None
        if not grestart.hand_over(transport.get_extra_info("socket")):
            return False
        # Our copy only: the successor holds the connection. Closing the
        # transport takes it out of the loop at once, so no byte of the
        # client's is read here any more.
        self.handler.force_close()
        return True


async def serve(app: web.Application, where: Listener, *, idle_grace: float = 2.0, **runner_options: Any) -> None:
    """Serves ``app`` on ``where`` (a socket from :func:`grestart.listen`, or an
    address for it), adopts the connections the previous generation hands
    over, calls :func:`grestart.ready`, and returns once this process has
    drained: then call :func:`grestart.shutdown`. ``runner_options`` go to
    ``aiohttp.web.AppRunner``."""
    idle_grace = check_grace(idle_grace)
    sock: socket.socket = listener(where)
    handing_over = [True]

    async def close_when_draining(_request: web.BaseRequest, response: web.StreamResponse) -> None:
        if grestart.draining() and not handing_over[0]:
            # The hook runs once the headers are made: say it, and do it.
            response.headers["Connection"] = "close"
            response.force_close()

    app.on_response_prepare.append(close_when_draining)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    loop = asyncio.get_running_loop()
    tracked: Set[_Tracked] = set()

    def protocol() -> _Tracked:
        return _Tracked(runner.server(), tracked)  # type: ignore[misc]

    def adopt_all() -> None:
        while (adopted := grestart.adopt(0)) is not None:
            loop.create_task(loop.connect_accepted_socket(protocol, adopted[0]))

    adopt = grestart.adopt_fd()  # before ready: the previous generation hands over to us
    loop.add_reader(adopt, adopt_all)
    try:
        server = await loop.create_server(protocol, sock=sock)
        grestart.ready()
        await grestart.shutdown_requested()
        loop.remove_reader(adopt)
        await stop_accepting(sock)
        server.close()  # our copy of the listener; the successor accepts the queue
        def hand_over_idle() -> None:
            for connection in list(tracked) if handing_over[0] else ():
                if connection.hand_over() is False:
                    handing_over[0] = False  # answer with "Connection: close" from now on
                    return

        aiohttp_server = runner.server
        await connections_finished(
            lambda: len(aiohttp_server.connections) if aiohttp_server else 0, idle_grace, hand_over_idle
        )
    finally:
        loop.remove_reader(adopt)
        await runner.cleanup()  # closes what stayed idle, waits for what is in flight


def run_app(app: web.Application, where: Listener, *, idle_grace: float = 2.0, **runner_options: Any) -> None:
    """:func:`serve` in a new event loop, then :func:`grestart.shutdown`."""
    asyncio.run(serve(app, where, idle_grace=idle_grace, **runner_options))
    grestart.shutdown()
