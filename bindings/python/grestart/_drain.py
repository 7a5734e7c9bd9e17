"""What the framework adapters share: the listener, stopping to accept, and
the connections counted as work in flight in the core, and the wait for the
last of them once the drain began.

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
import math
import os
import select
import socket
from typing import Any, Awaitable, Callable, Dict, Optional, Union

import grestart

Listener = Union[socket.socket, grestart.Address]


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


class CountedConnections(set):
    """A framework's set of its open connections (uvicorn's
    ``server_state.connections``, the aiohttp adapter's own), each counted as
    work in flight in the core while it is in the set, so that
    :func:`grestart.shutdown` and the idle fd see it. The frameworks' protocols
    add themselves on ``connection_made`` and discard (or remove) themselves
    on ``connection_lost``; only those three count."""

    def __init__(self) -> None:
        super().__init__()
        self._work: Dict[Any, grestart._Work] = {}

    def add(self, connection: Any) -> None:
        if connection not in self._work:
            self._work[connection] = grestart._Work()
        super().add(connection)

    def discard(self, connection: Any) -> None:
        super().discard(connection)
        work = self._work.pop(connection, None)
        if work is not None:
            work.end()

    def remove(self, connection: Any) -> None:
        if connection not in self:
            raise KeyError(connection)
        self.discard(connection)

    def let_go(self) -> None:
        """Ends the work of every connection still in the set, once the
        framework has closed them all: a ``connection_lost`` the event loop
        never got to run must not hold :func:`grestart.shutdown` back."""
        for connection in list(self):
            self.discard(connection)


def _readable(fd: int) -> bool:
    poller = select.poll()  # not select(): the fd may be above 1023
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


async def no_work_in_flight() -> None:
    """Returns once no work is in flight in this process (the core's count:
    the adapters' connections, :class:`grestart.Connection`,
    :class:`grestart.in_flight`), awaiting the idle fd, readable exactly then."""
    loop = asyncio.get_running_loop()
    fd = os.dup(grestart.idle_fd())  # a loop takes one reader per fd: one of our own
    try:
        # The loop may see the fd readable after work began again: look again.
        while not _readable(fd):
            woken = loop.create_future()
            loop.add_reader(fd, lambda: woken.done() or woken.set_result(None))
            try:
                await woken
            finally:
                loop.remove_reader(fd)
    finally:
        os.close(fd)


async def connections_finished(
    idle_grace: float,
    released: Optional[Callable[[], Awaitable[object]]] = None,
) -> None:
    """Returns once no work is in flight in this process, or once
    ``idle_grace`` seconds passed and then ``released()`` returned (what holds
    the drain past its grace: aiohttp's WebSockets). Call it once the server
    stopped accepting."""
    idle = asyncio.ensure_future(no_work_in_flight())
    waits = [idle]
    try:
        done, _ = await asyncio.wait(waits, timeout=None if math.isinf(idle_grace) else idle_grace)
        if not done and released is not None:
            waits.append(asyncio.ensure_future(released()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if idle.done():
            idle.result()  # its error, if any
    finally:
        for wait in waits:
            wait.cancel()
