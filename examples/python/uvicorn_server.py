#!/usr/bin/env python3
"""A uvicorn (ASGI) server that restarts gracefully on SIGUSR2 through grestart.

    pip install "./bindings/python[uvicorn]"
    python3 examples/python/uvicorn_server.py 127.0.0.1:8080
    kill -USR2 <pid>    # restart onto the program on disk; nothing is lost

Every GET (and POST) is answered with 200 and the headers X-Pid, X-Generation
and X-Version. What grestart adds to a plain uvicorn server is the listener
and grestart.uvicorn.run in place of uvicorn.run.
"""

import os
import sys

import grestart
import grestart.uvicorn

VERSION = os.environ.get("APP_VERSION", "1")
served = 0


async def app(scope, receive, send) -> None:
    """A bare ASGI application: any framework's (Starlette, FastAPI) runs the same way."""
    global served
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    served += 1
    pid, generation = os.getpid(), grestart.generation()
    body = f"served by pid {pid} generation {generation}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
        (b"x-pid", str(pid).encode()), (b"x-generation", str(generation).encode()),
        (b"x-version", VERSION.encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        print("usage: uvicorn_server.py HOST:PORT   (e.g. 127.0.0.1:8080)", file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    listener = grestart.listen((host.strip("[]"), int(port)))  # inherited, or new

    @grestart.on_shutdown
    def goodbye() -> None:
        print(f"uvicorn_server.py: pid {os.getpid()} generation {grestart.generation()} exiting after "
              f"{served} requests", file=sys.stderr)

    bound = listener.getsockname()
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"uvicorn_server.py: pid {os.getpid()} generation {grestart.generation()} version {VERSION} "
          f"listening on {host}:{bound[1]}", flush=True)
    grestart.uvicorn.run(app, listener, log_level="warning")  # ready once it listens; returns drained
    return 0


if __name__ == "__main__":
    sys.exit(main())
