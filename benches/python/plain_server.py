"""The framework examples' application served the framework's own way, with
no grestart: what a Python server's start costs anyway (interpreter, imports,
the framework's start-up), for `cargo bench --bench frameworks` to compare a
restart with. Prints the port it listens on, then serves until killed.

    python3 benches/python/plain_server.py aiohttp|uvicorn
"""

import socket
import sys

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1], flush=True)

if sys.argv[1] == "aiohttp":
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="served\n", headers={"X-Pid": "0", "X-Generation": "1"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    web.run_app(app, sock=listener, print=None, handle_signals=False)
else:
    import uvicorn

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"7"), (b"x-pid", b"0"), (b"x-generation", b"1")]})
        await send({"type": "http.response.body", "body": b"served\n"})

    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[listener])
