#!/usr/bin/env python3
"""A server that knows nothing of grestart, as many Python, Go and Rust servers
are: it takes its listening socket the systemd way (LISTEN_FDS, fd 3) and says
READY=1 on NOTIFY_SOCKET. `grestart run --listen ADDRESS -- this` restarts it.

    listen_fds_server.py [--no-notify]

Answers every GET with 200 and `X-Pid`, keep-alive. SIGTERM stops it
gracefully: it stops accepting, answers what each connection sends with
`Connection: close`, and exits 0 once they are done.

For failure tests, `LISTEN_FDS_SERVER_MODE` may name a file whose content
decides what a starting instance does: `exit` (exits with status 3 before it
is ready) or `hang` (never says it is ready, and never serves).
"""

import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

draining = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection ends by itself while draining

    def do_GET(self) -> None:
        body = f"pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("X-Pid", str(os.getpid()))
        self.send_header("Content-Length", str(len(body)))
        if draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def mode() -> str:
    path = os.environ.get("LISTEN_FDS_SERVER_MODE")
    try:
        with open(path or "", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "serve"


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


def main() -> int:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        print("listen_fds_server.py: expects one socket passed the systemd way", file=sys.stderr)
        return 2
    listener = socket.socket(fileno=3)
    # The socket is shared with the next instance, which may take a queued
    # connection between our select() and our accept().
    listener.setblocking(False)
    what = mode()
    if what == "exit":
        return 3
    signal.signal(signal.SIGTERM, lambda *_: draining.set())
    if what == "hang":
        draining.wait()
        return 0

    server = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = False
    server.block_on_close = True
    host, port = listener.getsockname()[:2]
    print(f"listen_fds_server.py: pid {os.getpid()} listening on {host}:{port}", flush=True)
    accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    accepting.start()
    if "--no-notify" not in sys.argv[1:]:
        notify("READY=1")
    while not draining.wait(1):  # wakes for signals: the handler runs in this thread
        pass
    server.shutdown()
    accepting.join()
    server.server_close()  # our copy of the socket; the launcher keeps its own
    return 0


if __name__ == "__main__":
    sys.exit(main())
