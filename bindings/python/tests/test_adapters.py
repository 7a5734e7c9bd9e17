"""The framework adapters' API: bad input fails clearly, before anything
listens. Their restarts under load, with idle and just-accepted connections,
run from the Rust test kit (tests/frameworks.rs) on the example servers."""

import asyncio
import socket

import pytest

import grestart
import grestart.aiohttp
import grestart.uvicorn
from aiohttp import web


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
