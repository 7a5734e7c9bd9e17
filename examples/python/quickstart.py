"""grestart's Python quick start: a blocking, thread-per-connection HTTP server
that restarts on SIGUSR2 without losing a request. README.md ("Quick start")
has the commands that install grestart and run it.
"""

import os
import sys
import threading

import grestart


def answer(conn: grestart.Connection) -> None:  # one request per connection
    with conn:  # closing it ends its work in flight
        request = b""
        while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
            request += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n"
                     b"X-Pid: %d\r\nX-Generation: %d\r\n\r\n" % (os.getpid(), grestart.generation()))


host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080").rsplit(":", 1)
listener = grestart.listen((host, int(port)))  # inherited, or bound now
print(f"quickstart: pid {os.getpid()} listening on {host}:{listener.getsockname()[1]}", flush=True)
grestart.ready()  # the previous generation drains now
for conn in grestart.incoming(listener):  # until a successor serves
    threading.Thread(target=answer, args=(conn,)).start()
grestart.shutdown()  # waits until every connection is closed, then runs the hooks
