#!/usr/bin/env python3
"""A threaded HTTP/1.1 server that restarts gracefully on SIGUSR2 through grestart.

    python3 examples/python/http_server.py 127.0.0.1:8080
    kill -USR2 <pid>     # restart onto the code on disk; nothing is lost

Every GET and POST is answered with 200 and the headers X-Pid, X-Generation, X-Version.
When a successor is ready this process stops accepting, answers each
connection's next request with "Connection: close", closes connections that
stay idle, runs its shutdown hooks and exits.
"""

import os
import select
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grestart

VERSION = os.environ.get("APP_VERSION", "1")
draining = threading.Event()
served = 0
served_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # The head and the body go out in two writes: with Nagle's algorithm the
    # body would wait for the client's delayed ACK, 40 ms per kept-alive request.
    disable_nagle_algorithm = True

    def handle(self) -> None:
        # Wait for each next request with a short timeout, so that an idle
        # keep-alive connection notices the drain instead of blocking in read.
        self.close_connection = False
        idle_since = time.monotonic()
        while not self.close_connection:
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if not readable:
                if draining.is_set() and time.monotonic() - idle_since > grestart.DEFAULT_IDLE_GRACE:
                    return
                continue
            self.handle_one_request()
            idle_since = time.monotonic()

    def do_GET(self) -> None:
        global served
        body = f"served by pid {os.getpid()} generation {grestart.generation()}\n".encode()
        closing = draining.is_set() or self.close_connection
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.send_header("X-Generation", str(grestart.generation()))
        self.send_header("X-Version", VERSION)
        self.send_header("Connection", "close" if closing else "keep-alive")
        self.end_headers()
        self.wfile.write(body)
        if closing:
            self.close_connection = True
        with served_lock:
            served += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the body, then as GET
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the restart log


def main() -> int:
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        print("usage: http_server.py HOST:PORT   (e.g. 127.0.0.1:8080)", file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    listener = grestart.listen((host.strip("[]"), int(port)))
    # Non-blocking accept: the socket is shared with the next generation, which
    # may take a queued connection between our select() and our accept().
    listener.setblocking(False)

    server = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener  # the inherited (or freshly bound) socket
    server.daemon_threads = False  # server_close() waits for in-flight connections
    server.block_on_close = True

    @grestart.on_shutdown
    def goodbye() -> None:
        print(f"http_server.py: pid {os.getpid()} generation {grestart.generation()} exiting after {served} requests",
              file=sys.stderr)

    grestart.set_drain_deadline(30)
    # `docker stop`, `systemctl stop`, the launcher's SIGTERM: drain, run the hooks, exit 0.
    grestart.set_stop_signal(signal.SIGTERM)
    bound = listener.getsockname()
    print(f"http_server.py: pid {os.getpid()} generation {grestart.generation()} version {VERSION} "
          f"listening on {bound[0]}:{bound[1]}", flush=True)
    grestart.ready()  # before accepting: a server that answers can be restarted
    accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    accepting.start()

    grestart.wait_shutdown()  # a successor serves now
    draining.set()
    server.shutdown()  # stop accepting; the successor takes what is queued
    accepting.join()
    server.server_close()  # closes our copy of the socket and waits for connections
    grestart.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
