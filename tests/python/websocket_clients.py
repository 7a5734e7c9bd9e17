#!/usr/bin/env python3
"""WebSocket clients that stay connected across restarts, for tests/websockets.rs.

    websocket_clients.py HOST:PORT CLIENTS

Each client connects to ws://HOST:PORT/ws (the handshake's X-Pid and
X-Generation say which generation took it), sends numbered messages one at a
time, four a second, each checked to come back as sent, and reconnects when the
server closes. A close must be a 1012 close frame that the server sent first,
answered, and followed by an orderly end of the connection (no reset); the one
message a client sent while the close frame was on its way is sent again on
the next connection. The clients come from the `websockets` package, another
implementation of the protocol than the server's.

Prints, each time every client is connected to one newer generation:
    generation G: all N clients connected, S s from the first to the last
and, once standard input ends, the clients close (code 1000) and it prints
    echoes PID COUNT          (messages answered by each pid)
    closes C unanswered U     (server closes; messages sent again)
    violation: WHAT           (anything that broke the rules above)
then exits.
"""

import asyncio
import collections
import sys
from typing import Dict, List

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PACE = 0.25  # seconds between a client's messages


class Clients:
    def __init__(self, count: int) -> None:
        self.count = count
        self.generation_of: Dict[int, int] = {}  # client -> generation it is connected to
        self.first_at: Dict[int, float] = {}  # generation -> its first connection
        self.reported = 0  # the newest generation every client was seen on
        self.echoes: Dict[int, int] = collections.Counter()
        self.closes = 0
        self.unanswered = 0
        self.violations: List[str] = []

    def connected(self, client: int, generation: int) -> None:
        now = asyncio.get_running_loop().time()
        self.first_at.setdefault(generation, now)
        self.generation_of[client] = generation
        on = set(self.generation_of.values())
        if len(self.generation_of) == self.count and on == {generation} and generation > self.reported:
            self.reported = generation
            span = now - self.first_at[generation]
            print(f"generation {generation}: all {self.count} clients connected, "
                  f"{span:.3f} s from the first to the last", flush=True)

    def closed(self, client: int, close: ConnectionClosed) -> None:
        del self.generation_of[client]
        self.closes += 1
        told = close.rcvd is not None and close.rcvd.code == 1012 and close.rcvd_then_sent
        if not told or close.__cause__ is not None:
            self.violations.append(f"client {client}: not a 1012 close frame then an orderly end: "
                                   f"{close} (cause {close.__cause__!r})")


async def converse(ws: ClientConnection, client: int, clients: Clients, state: dict, stop: asyncio.Future) -> None:
    """Messages one at a time until the server closes (ConnectionClosed) or
    `stop`; `state` keeps the message number, and the message not yet
    answered, to send again on the next connection."""
    pid = int(ws.response.headers["X-Pid"])
    closed = asyncio.ensure_future(ws.wait_closed())
    try:
        while not stop.done():
            if state["pending"] is None:
                state["n"] += 1
                state["pending"] = f"{client} {state['n']}"
            await ws.send(state["pending"])  # raises once the close frame came in
            reply = await ws.recv()
            if reply != state["pending"]:
                clients.violations.append(f"client {client}: sent {state['pending']!r}, got {reply!r}")
            clients.echoes[pid] += 1
            state["pending"] = None
            # The pace, cut short by a close or the end of the run.
            await asyncio.wait((closed, stop), timeout=PACE, return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                extra = await ws.recv()  # raises ConnectionClosed, as it should
                clients.violations.append(f"client {client}: a message nobody asked for: {extra!r}")
    finally:
        closed.cancel()


async def client(number: int, uri: str, clients: Clients, stop: asyncio.Future) -> None:
    state: dict = {"n": 0, "pending": None}
    while not stop.done():
        try:
            # No compression: the test is about closes and echoes, and zlib per
            # connection costs CPU that two cores shared with builds lack.
            ws = await connect(uri, compression=None, ping_interval=None, open_timeout=10, close_timeout=10)
        except Exception as e:  # a refused or reset connection, a failed handshake
            clients.violations.append(f"client {number}: cannot connect: {e!r}")
            return
        clients.connected(number, int(ws.response.headers["X-Generation"]))
        try:
            await converse(ws, number, clients, state, stop)
        except ConnectionClosed as close:
            clients.closed(number, close)
            if state["pending"] is not None:
                clients.unanswered += 1
            continue
        except Exception as e:
            clients.violations.append(f"client {number}: {e!r}")
            await ws.close()
            return
        await ws.close()  # the end of the run: 1000


async def main(address: str, count: int) -> int:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future = loop.create_future()
    # Standard input ending (or "stop") ends the run.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    clients = Clients(count)
    tasks = [asyncio.ensure_future(client(i, f"ws://{address}/ws", clients, stop)) for i in range(count)]
    await reader.readline()
    stop.set_result(None)
    await asyncio.gather(*tasks)
    for pid, echoes in sorted(clients.echoes.items()):
        print(f"echoes {pid} {echoes}")
    print(f"closes {clients.closes} unanswered {clients.unanswered}")
    for violation in clients.violations:
        print(f"violation: {violation}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
