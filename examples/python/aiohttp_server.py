#!/usr/bin/env python3
"""An aiohttp server that restarts gracefully on SIGUSR2 through grestart.

    pip install "./bindings/python[aiohttp]"
    python3 examples/python/aiohttp_server.py 127.0.0.1:8080
    kill -USR2 <pid>    # restart onto the program on disk; nothing is lost

Every GET (and POST) is answered with 200 and the headers X-Pid, X-Generation
and X-Version, but /ws: a WebSocket that sends each text message back as it
came (its handshake answer has the same headers). What grestart adds to a
plain aiohttp server is the listener, grestart.aiohttp.run_app in place of
web.run_app, and grestart.aiohttp.websocket_messages in place of iterating
over the WebSocket: a draining generation closes it with 1012 ("service
restart"), and the client reconnects to the successor.
"""

import os
import sys

from aiohttp import WSMsgType, web

import grestart
import grestart.aiohttp

VERSION = os.environ.get("APP_VERSION", "1")
served = 0
echoed = 0


def identity() -> dict:
    return {"X-Pid": str(os.getpid()), "X-Generation": str(grestart.generation()), "X-Version": VERSION}


async def hello(request: web.Request) -> web.Response:
    global served
    await request.read()
    served += 1
    return web.Response(text=f"served by pid {os.getpid()} generation {grestart.generation()}\n", headers=identity())


async def echo(request: web.Request) -> web.WebSocketResponse:
    global echoed
    ws = web.WebSocketResponse()
    ws.headers.update(identity())
    await ws.prepare(request)
    async for msg in grestart.aiohttp.websocket_messages(ws):  # ends with 1012 when we drain
        if msg.type is WSMsgType.TEXT:
            echoed += 1
            await ws.send_str(msg.data)
    return ws


def main() -> int:
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        print("usage: aiohttp_server.py HOST:PORT   (e.g. 127.0.0.1:8080)", file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    listener = grestart.listen((host.strip("[]"), int(port)))  # inherited, or new

    @grestart.on_shutdown
    def goodbye() -> None:
        print(f"aiohttp_server.py: pid {os.getpid()} generation {grestart.generation()} exiting after "
              f"{served} requests and {echoed} WebSocket messages", file=sys.stderr)

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_route("*", "/{tail:.*}", hello)
    bound = listener.getsockname()
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"aiohttp_server.py: pid {os.getpid()} generation {grestart.generation()} version {VERSION} "
          f"listening on {host}:{bound[1]}", flush=True)
    # Ready once it serves; returns drained. Its WebSockets close over 2.5 s.
    grestart.aiohttp.run_app(app, listener, websocket_window=2.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
