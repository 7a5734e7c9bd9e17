#!/usr/bin/env python3
"""The asyncio flavour of http_server.py: same interface, same behaviour.

    python3 examples/python/asyncio_server.py 127.0.0.1:8080
"""

import asyncio
import os
import sys

import grestart

VERSION = os.environ.get("APP_VERSION", "1")


class Server:
    def __init__(self) -> None:
        self.draining = False
        self.served = 0
        self.connections: set = set()

    def start(self, connection) -> None:
        """Serves an accepted socket; tracked from this moment, so the drain waits for it."""
        task = asyncio.ensure_future(self.handle(connection))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def handle(self, connection) -> None:
        reader, writer = await asyncio.open_connection(sock=connection)
        try:
            while True:
                try:
                    head = await self.next_request(reader)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if head is None:
                    return
                lines = head.decode("latin-1").lower().split("\r\n")
                http10 = lines[0].endswith("http/1.0")
                headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
                connection = headers.get("connection", "").strip()
                length = int(headers.get("content-length", "0").strip() or 0)
                if length:
                    await reader.readexactly(length)
                is_get = lines[0].startswith(("get ", "post "))  # both are served
                closing = self.draining or not is_get or (connection != "keep-alive" if http10 else connection == "close")
                body = (f"served by pid {os.getpid()} generation {grestart.generation()}\n" if is_get
                        else "only GET and POST are served here\n").encode()
                status = "200 OK" if is_get else "405 Method Not Allowed"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    f"X-Pid: {os.getpid()}\r\nX-Generation: {grestart.generation()}\r\nX-Version: {VERSION}\r\n"
                    f"Connection: {'close' if closing else 'keep-alive'}\r\n\r\n".encode() + body)
                await writer.drain()
                self.served += 1
                if closing:
                    return
        finally:
            writer.close()

    async def next_request(self, reader: asyncio.StreamReader):
        """The next request head; None when the client closed, or stayed idle while draining."""
        idle = 0.0
        while True:
            try:
                return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.2)
            except asyncio.TimeoutError:
                idle += 0.2
                if self.draining and idle > grestart.DEFAULT_IDLE_GRACE and not reader._buffer:  # noqa: SLF001
                    return None
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    return None
                raise


async def accept_until_shutdown(listener, state: Server) -> None:
    # Accept from a reader callback rather than asyncio.start_server or a
    # cancellable sock_accept: a connection is tracked the moment it is
    # accepted, so none can be dropped between accept and its handler when
    # the drain begins.
    def accept_all() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                print(f"asyncio_server.py: accept: {e}", file=sys.stderr)
                return
            connection.setblocking(False)
            state.start(connection)

    loop = asyncio.get_running_loop()
    loop.add_reader(listener.fileno(), accept_all)
    try:
        await grestart.shutdown_requested()
    finally:
        loop.remove_reader(listener.fileno())


async def main() -> int:
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        print("usage: asyncio_server.py HOST:PORT   (e.g. 127.0.0.1:8080)", file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    listener = grestart.listen((host.strip("[]"), int(port)))
    listener.setblocking(False)
    state = Server()

    @grestart.on_shutdown
    def goodbye() -> None:
        print(f"asyncio_server.py: pid {os.getpid()} generation {grestart.generation()} exiting after "
              f"{state.served} requests", file=sys.stderr)

    grestart.set_drain_deadline(30)
    bound = listener.getsockname()
    print(f"asyncio_server.py: pid {os.getpid()} generation {grestart.generation()} version {VERSION} "
          f"listening on {bound[0]}:{bound[1]}", flush=True)
    grestart.ready()

    await accept_until_shutdown(listener, state)  # then a successor serves
    state.draining = True
    listener.close()  # our copy only; the successor accepts what is still queued
    while state.connections:
        await asyncio.wait(set(state.connections))
    grestart.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
