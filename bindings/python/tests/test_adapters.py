"""The framework adapters' API: bad input fails clearly, before anything
listens; their connections are the core's work in flight. Their restarts
under load, with idle and just-accepted connections, run from the Rust test
kit (tests/frameworks.rs) on the example servers."""

import asyncio
import json
import socket

import pytest

import grestart
import grestart.aiohttp
import grestart.uvicorn
from aiohttp import web
from conftest import run_python


async def asgi_app(scope, receive, send) -> None:
    pass


@pytest.mark.parametrize("grace", [-1, "2", None, True, float("nan")])
def test_a_bad_idle_grace_is_refused_before_anything_listens(grace):
    with pytest.raises(ValueError, match="idle_grace"):
        asyncio.run(grestart.aiohttp.serve(web.Application(), ("127.0.0.1", 0), idle_grace=grace))
    with pytest.raises(ValueError, match="idle_grace"):
        asyncio.run(grestart.uvicorn.serve(asgi_app, ("127.0.0.1", 0), idle_grace=grace))


@pytest.mark.parametrize("window", [-1, "5", None, float("nan")])
def test_a_bad_websocket_window_is_refused_before_anything_listens(window):
    with pytest.raises(ValueError, match="websocket_window"):
        asyncio.run(grestart.aiohttp.serve(web.Application(), ("127.0.0.1", 0), websocket_window=window))


def test_a_bad_address_raises_type_error():
    with pytest.raises(TypeError):
        asyncio.run(grestart.aiohttp.serve(web.Application(), 8080))
    with pytest.raises(TypeError):
        asyncio.run(grestart.uvicorn.serve(asgi_app, ("127.0.0.1", "8080")))


def test_not_draining_while_serving():
    assert grestart.draining() is False


def test_aiohttp_framing_finds_the_end_of_each_request():
    from grestart.aiohttp import _Framing

    framing = _Framing()
    framing.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo")
    assert not framing.at_boundary(), "half of a pipelined request is held"
    framing.feed(b"st: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert not framing.at_boundary(), "a body not yet whole"
    framing.feed(b"cde")
    assert framing.at_boundary()
    framing.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert not framing.at_boundary(), "a chunked body is not framed: never handed over"


def test_aiohttp_framing_leaves_an_upgraded_connection_alone():
    from grestart.aiohttp import _Framing

    framing = _Framing()
    framing.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    framing.feed(b"\x81\x85" + bytes(9) + b"GET / HTTP/1.1\r\n\r\n")
    assert not framing.at_boundary(), "WebSocket frames are no HTTP requests: never handed over"
    assert not framing.rest, "nor kept"


# An adapter serving one keep-alive connection, then drained (no successor)
# by grestart.shutdown() from a thread, which waits for that connection as
# the adapter's drain does: the client's close ends both, long before the
# idle grace.
DRAINED_BY_THE_LAST_CLOSE = """
import asyncio, json, select, socket, threading, time
import grestart
{serve}

def idle():
    poller = select.poll()
    poller.register(grestart.idle_fd(), select.POLLIN)
    return bool(poller.poll(0))

async def main():
    seen = {{"idle before": idle()}}
    sock = socket.create_server(("127.0.0.1", 0))
    serving = asyncio.ensure_future(serve(sock, idle_grace=60))
    reader, writer = await asyncio.open_connection(*sock.getsockname())
    writer.write(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    await asyncio.wait_for(reader.readuntil(b"\\r\\n\\r\\n"), 10)  # answered: the adapter has it
    seen["idle while open"] = idle()
    shutdown_returned = []
    shutdown = threading.Thread(target=lambda: (grestart.shutdown(), shutdown_returned.append(time.monotonic())))
    shutdown.start()
    await asyncio.wait_for(grestart.shutdown_requested(), 10)
    # Still open, so still draining, however long this takes to be true.
    seen["drain waits for the open connection"] = not (await asyncio.wait([serving], timeout=0.3))[0]
    closed = time.monotonic()
    writer.close()
    await asyncio.wait_for(serving, 10)  # not the 60 s grace
    seen["drained after the close"] = time.monotonic() - closed
    shutdown.join(10)
    seen["shutdown waited for the close"] = bool(shutdown_returned) and shutdown_returned[0] > closed
    print(json.dumps(seen))

asyncio.run(main())
"""

AIOHTTP = """
from aiohttp import web
import grestart.aiohttp

async def hello(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_get("/", hello)

def serve(sock, idle_grace):
    return grestart.aiohttp.serve(app, sock, idle_grace=idle_grace)
"""

UVICORN = """
import grestart.uvicorn

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

def serve(sock, idle_grace):
    return grestart.uvicorn.serve(app, sock, idle_grace=idle_grace, lifespan="off", log_level="warning")
"""


@pytest.mark.parametrize("adapter", [AIOHTTP, UVICORN], ids=["aiohttp", "uvicorn"])
def test_the_adapters_connections_are_work_in_flight_and_the_last_close_ends_the_drain(adapter):
    result = run_python(DRAINED_BY_THE_LAST_CLOSE.format(serve=adapter))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["idle before"] is True, seen
    assert seen["idle while open"] is False, f"the core does not count the connection: {seen}"
    assert seen["drain waits for the open connection"] is True, seen
    assert seen["shutdown waited for the close"] is True, seen
    # Correctness, not speed: the 60 s grace did not end it (uvicorn's own
    # shutdown adds its 0.1 s ticks).
    assert seen["drained after the close"] < 5, seen
