"""The application gunicorn serves in benches/peers.rs: the least a WSGI app
can do, answering 200 with X-Pid (the worker's pid) so that the benchmark
tells the generations apart."""

import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "3"), ("X-Pid", str(os.getpid()))])
    return [b"ok\n"]
