"""The framework examples' application served the framework's own way, with
no grestart: what a Python server's start costs anyway (interpreter, imports,
the framework's start-up), for `cargo bench --bench frameworks` to compare a
restart with. Prints the port it listens on, then serves until killed.

    python3 benches/python/plain_server.py aiohttp|uvicorn

The application is the example's, handler for handler (the uvicorn one with
its lifespan, which makes uvicorn import and run its lifespan protocol), so
that what the comparison leaves is grestart's.
"""

import os
import socket
import sys

VERSION = os.environ.get("APP_VERSION", "1")
served = 0

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1], flush=True)

if sys.argv[1] == "aiohttp":
    from aiohttp import WSMsgType, web

    def identity() -> dict:
        return {"X-Pid": str(os.getpid()), "X-Generation": "1", "X-Version": VERSION}

    async def hello(request: web.Request) -> web.Response:
        global served
        await request.read()
        served += 1
        return web.Response(text=f"served by pid {os.getpid()} generation 1\n", headers=identity())

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers.update(identity())
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_route("*", "/{tail:.*}", hello)
    web.run_app(app, sock=listener, print=None, handle_signals=False)
else:
    import uvicorn

    async def app(scope, receive, send) -> None:
        global served
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        served += 1
        pid = os.getpid()
        body = f"served by pid {pid} generation 1\n".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
            (b"x-pid", str(pid).encode()), (b"x-generation", b"1"), (b"x-version", VERSION.encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
