"""Runs an aiohttp application on a grestart listener (the ``aiohttp`` extra:
``pip install "./bindings/python[aiohttp]"`` in the repository, or the wheel
``scripts/build-wheel`` makes with ``[aiohttp]``; see README.md, "Install").

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
seconds (default :data:`grestart.DEFAULT_IDLE_GRACE`) instead. Nothing a
client sent is lost.

A WebSocket cannot be handed over: it belongs to its handler. A handler that
reads its messages through :func:`websocket_messages` is told to reconnect
instead, with close code 1012 ("service restart"), and its client reconnects
to the successor. Once it has handed over its idle connections, the old
generation closes its WebSockets one by one, spread evenly over
``websocket_window`` seconds (a million clients told to reconnect in the same
instant are a storm), while requests in flight still finish; it waits for the
last close, ``idle_grace`` or not. The drain deadline
(:func:`grestart.set_drain_deadline`) bounds it all: keep the window well
below it, or the WebSockets left when it fires end without a close frame.
"""

from __future__ import annotations

import asyncio
import math
import socket
import weakref
from typing import Any, AsyncIterator, Optional

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

import grestart

from ._drain import CountedConnections, Listener, check_grace, connections_finished, listener, stop_accepting

__all__ = ["serve", "run_app", "websocket_messages", "DEFAULT_WEBSOCKET_WINDOW"]

# The default of ``websocket_window``, in seconds.
DEFAULT_WEBSOCKET_WINDOW = 5.0


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
    when it is idle: waiting for its next request, no byte of one read. The
    connection counts as work in flight in the core while it is open.

    It reads three attributes of aiohttp's RequestHandler (``_waiter``,
    ``_messages``, ``_request_count``); without them (another aiohttp) no
    connection counts as idle and the drain closes as without hand-over."""

    def __init__(self, handler: Any, tracked: CountedConnections, drain: "_Drain") -> None:
        self.handler = handler
        self.tracked = tracked
        self.drain = drain
        self.transport: Optional[asyncio.Transport] = None
        # The bytes received since the end of the last whole request: aiohttp's
        # parser (llhttp, whose state Python cannot see) holds them, and a
        # successor would never get them. Only a connection with none is idle.
        self.framing = _Framing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tracked.add(self)
        self.handler.connection_made(transport)
        self.drain.soon(self)  # made while draining: idle once aiohttp waits

    def data_received(self, data: bytes) -> None:
        self.framing.feed(data)
        self.handler.data_received(data)
        # The rest of a body aiohttp reads and drops after its answer.
        self.drain.soon(self)

    def eof_received(self) -> Optional[bool]:
        return self.handler.eof_received()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.tracked.discard(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()
        self.drain.soon(self)  # the answer held back below has gone out

    def waiting(self) -> bool:
        waiter = getattr(self.handler, "_waiter", None)
        return waiter is not None and not waiter.done() and not getattr(self.handler, "_messages", True)

    def hand_over(self) -> None:
        """Hands the connection over if it is idle (and the successor takes
        it); else leaves it, to be tried again at its next event."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > 0:
            # An answer still on its way: with no room above zero, the
            # transport calls resume_writing once it has gone out.
            transport.set_write_buffer_limits(high=0)
            return
        if (
            not self.framing.at_boundary()
            or getattr(self.handler, "_message_tail", b"")
            or not self.waiting()
            or not grestart.hand_over(transport.get_extra_info("socket"))
        ):
            return
        # Our copy only: the successor holds the connection. Closing the
        # transport takes it out of the loop at once, so no byte of the
        # client's is read here any more.
        self.handler.force_close()


class _Drain:
    """Whether this generation hands its idle connections over now, and the
    events that make a connection idle: each tries the hand-over on the next
    turn of the loop, once aiohttp waits for the connection's next request.
    (No periodic turn: aiohttp has no "idle" event, but a connection turns
    idle only after one of these: its answer finished, its answer's last
    bytes written, the rest of a body read, or it was just made.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.handing_over = False

    def soon(self, connection: _Tracked) -> None:
        if self.handing_over:
            self.loop.call_soon(connection.hand_over)

    def after_request(self, request: web.BaseRequest) -> None:
        """Tries the hand-over once the task that answers ``request`` has
        finished: aiohttp's loop for the connection then waits for its next
        request."""
        transport = request.transport
        task = asyncio.current_task()
        if transport is not None and task is not None:
            tracked = transport.get_protocol()
            if isinstance(tracked, _Tracked):
                task.add_done_callback(lambda _: self.loop.call_soon(tracked.hand_over))


class _WebSockets:
    """The WebSockets of :func:`websocket_messages` open in one event loop,
    each with its turn: a future resolved when its handler must close it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.turns: "dict[asyncio.Future[None], None]" = {}  # the oldest first
        self.closing = False
        self.none_open = asyncio.Event()
        self.none_open.set()

    def turn(self) -> "asyncio.Future[None]":
        turn = self.loop.create_future()
        if self.closing:
            turn.set_result(None)  # opened while draining: reconnect at once
        self.turns[turn] = None
        self.none_open.clear()
        return turn

    def forget(self, turn: "asyncio.Future[None]") -> None:
        self.turns.pop(turn, None)
        if not self.turns:
            self.none_open.set()

    def spread(self, window: float) -> None:
        """Gives every open WebSocket its turn, evenly over ``window`` seconds
        from now, the oldest first (``math.inf``: none is closed)."""
        if math.isinf(window):
            return
        self.closing = True
        waiting = [turn for turn in self.turns if not turn.done()]
        for i, turn in enumerate(waiting):
            self.loop.call_later(window * i / len(waiting), _resolve, turn)


def _resolve(turn: "asyncio.Future[None]") -> None:
    if not turn.done():
        turn.set_result(None)


_websockets: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WebSockets]" = weakref.WeakKeyDictionary()


def _websockets_of(loop: asyncio.AbstractEventLoop) -> _WebSockets:
    sockets = _websockets.get(loop)
    if sockets is None:
        sockets = _websockets[loop] = _WebSockets(loop)
    return sockets


async def websocket_messages(ws: web.WebSocketResponse) -> AsyncIterator[WSMessage]:
    """The messages of the prepared WebSocket ``ws``, as ``async for msg in
    ws`` gives them, until the client closes it, or until this generation
    drains and its turn comes: then it closes ``ws`` with 1012 ("service
    restart"; the client reconnects, to the successor) and ends. Call it from
    the WebSocket's own handler, its only reader.

    Every message it gave is one the handler has answered when it asks for
    the next, since the close frame goes only then; the one message a client
    sends while the close frame is on its way is read by ``ws.close`` and
    dropped, unanswered, and the client knows which it was. (``ws.close()``
    from another task, while the handler waits in ``receive()``, does not
    wait for the client's close frame: a message the client sends meanwhile
    makes the kernel reset the connection.)"""
    sockets = _websockets_of(asyncio.get_running_loop())
    turn = sockets.turn()
    receive: "Optional[asyncio.Future[WSMessage]]" = None
    try:
        while not turn.done():
            receive = asyncio.ensure_future(ws.receive())
            await asyncio.wait((receive, turn), return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                # Our turn, no message read: receive() stops with the
                # message, if any, still in aiohttp's queue, for close().
                receive.cancel()
                await asyncio.wait((receive,))
                if receive.cancelled():
                    break
            msg = receive.result()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            yield msg
        # Sends the close frame, and reads until the client's, so that the
        # connection ends in order (the server closes first, RFC 6455 7.1.1).
        await ws.close(code=WSCloseCode.SERVICE_RESTART)
    finally:
        if receive is not None:
            receive.cancel()
        sockets.forget(turn)


async def serve(
    app: web.Application,
    where: Listener,
    *,
    idle_grace: float = grestart.DEFAULT_IDLE_GRACE,
    websocket_window: float = DEFAULT_WEBSOCKET_WINDOW,
    **runner_options: Any,
) -> None:
    """Serves ``app`` on ``where`` (a socket from :func:`grestart.listen`, or an
    address for it), adopts the connections the previous generation hands
    over, calls :func:`grestart.ready`, and returns once this process has
    drained: then call :func:`grestart.shutdown`. The WebSockets of
    :func:`websocket_messages` close over ``websocket_window`` seconds once
    the drain began. ``runner_options`` go to ``aiohttp.web.AppRunner``."""
    idle_grace = check_grace(idle_grace)
    websocket_window = check_grace(websocket_window, "websocket_window")
    sock: socket.socket = listener(where)
    loop = asyncio.get_running_loop()
    drain = _Drain(loop)

    async def on_response_prepare(request: web.BaseRequest, response: web.StreamResponse) -> None:
        if not grestart.draining():
            return
        if grestart.successor_adopts():
            drain.after_request(request)
        else:
            # The hook runs once the headers are made: say it, and do it.
            response.headers["Connection"] = "close"
            response.force_close()

    app.on_response_prepare.append(on_response_prepare)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    tracked = CountedConnections()

    def protocol() -> _Tracked:
        return _Tracked(runner.server(), tracked, drain)  # type: ignore[misc]

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
        if grestart.successor_adopts():
            drain.handing_over = True
            for connection in list(tracked):  # first the idle connections, then the WebSockets
                connection.hand_over()
        websockets = _websockets_of(loop)
        websockets.spread(websocket_window)
        # Not before the last WebSocket closed: the cleanup makes aiohttp
        # ignore what any connection receives, a client's close frame too.
        await connections_finished(idle_grace, websockets.none_open.wait)
    finally:
        loop.remove_reader(adopt)
        try:
            await runner.cleanup()  # closes what stayed idle, waits for what is in flight
        finally:
            tracked.let_go()


def run_app(
    app: web.Application,
    where: Listener,
    *,
    idle_grace: float = grestart.DEFAULT_IDLE_GRACE,
    websocket_window: float = DEFAULT_WEBSOCKET_WINDOW,
    **runner_options: Any,
) -> None:
    """:func:`serve` in a new event loop, then :func:`grestart.shutdown`."""
    asyncio.run(serve(app, where, idle_grace=idle_grace, websocket_window=websocket_window, **runner_options))
    grestart.shutdown()
