"""What the framework adapters share: the listener, stopping to accept, and
the wait for the connections to finish once the drain began.

A framework's own graceful shutdown closes idle and just-accepted connections
at once, which is right for a process that stops for good and wrong for a
hand-over: a client may be sending its next request on that connection at
that very moment, and it is lost. The adapters instead stop accepting, hand
idle connections to the successor where they can (aiohttp), answer the next
request of each other connection with ``Connection: close``, and only close
what stays idle for ``idle_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, Optional, Union

import grestart

Listener = Union[socket.socket, grestart.Address]

# Poll period of the wait for the last connection: the frameworks have no
# event for "connection closed" or "connection idle", and it bounds how long
# an old generation lingers after its last connection.
_PERIOD = 0.005


def listener(where: Listener) -> socket.socket:
    """``where`` itself when it is a socket, else ``grestart.listen(where)``."""
    if isinstance(where, socket.socket):
        return where
    return grestart.listen(where)


def check_grace(seconds: float, name: str = "idle_grace") -> float:
    """A number of seconds >= 0 (``math.inf``: idle connections, or
    WebSockets, stay until their clients close them)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {seconds!r}")
    return float(seconds)


async def stop_accepting(sock: socket.socket) -> None:
    """Stops the event loop accepting on ``sock`` without losing a connection
    it already accepted; close the framework's server after this.

    asyncio accepts in a callback, and sets each connection up in a task of
    its own: the task creates the transport on the next turn of the loop (and
    the protocol's ``connection_made`` runs on the turn after). Closing the
    server first would make those tasks fail (the transport cannot attach to
    a closed server) and drop their connections with the request unread. So
    the listener leaves the loop first, and the tasks get their turns."""
    asyncio.get_running_loop().remove_reader(sock.fileno())  # uvloop: not ours, no-op
    for _ in range(3):  # two turns suffice; one more costs nothing
        await asyncio.sleep(0)


async def connections_finished(
    open_connections: Callable[[], int],
    idle_grace: float,
    each_turn: Optional[Callable[[], None]] = None,
    hold: Callable[[], bool] = lambda: False,
) -> None:
    """Returns once ``open_connections()`` is 0, or ``idle_grace`` seconds passed
    and ``hold()`` is false, calling ``each_turn()`` (hand idle connections
    over) meanwhile. Call it once the server stopped accepting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_grace
    while open_connections() and (loop.time() < deadline or hold()):
        if each_turn is not None:
            each_turn()
        await asyncio.sleep(_PERIOD)
