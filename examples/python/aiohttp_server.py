#!/usr/bin/env python3
"""An aiohttp server that restarts gracefully on SIGUSR2 through grestart.

    pip install ./bindings/python[aiohttp]
    python3 examples/python/aiohttp_server.py 127.0.0.1:8080
    kill -USR2 <pid>    # restart onto the program on disk; nothing is lost

Every GET (and POST) is answered with 200 and the headers X-Pid, X-Generation
and X-Version. What grestart adds to a plain aiohttp server is the listener
and grestart.aiohttp.run_app in place of web.run_app.
"""

import os
import sys

from aiohttp import web

import grestart
import grestart.aiohttp

VERSION = os.environ.get("APP_VERSION", "1")
served = 0


async def hello(request: web.Request) -> web.Response:
    global served
    await request.read()
    served += 1
    pid, generation = os.getpid(), grestart.generation()
    return web.Response(
        text=f"served by pid {pid} generation {generation}\n",
        headers={"X-Pid": str(pid), "X-Generation": str(generation), "X-Version": VERSION},
    )


def main() -> int:
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        print("usage: aiohttp_server.py HOST:PORT   (e.g. 127.0.0.1:8080)", file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    listener = grestart.listen((host.strip("[]"), int(port)))  # inherited, or new

    @grestart.on_shutdown
    def goodbye() -> None:
        print(f"aiohttp_server.py: pid {os.getpid()} generation {grestart.generation()} exiting after "
              f"{served} requests", file=sys.stderr)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    bound = listener.getsockname()
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"aiohttp_server.py: pid {os.getpid()} generation {grestart.generation()} version {VERSION} "
          f"listening on {host}:{bound[1]}", flush=True)
    grestart.aiohttp.run_app(app, listener)  # ready once it serves; returns drained
    return 0


if __name__ == "__main__":
    sys.exit(main())
