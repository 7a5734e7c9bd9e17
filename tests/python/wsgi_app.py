"""The application gunicorn serves in tests/launcher.rs: 200 and `X-Pid`, the
pid of gunicorn's master (the instance the launcher started), for every request."""

import os


def app(environ, start_response):
    body = b"ok\n"
    start_response("200 OK", [("X-Pid", str(os.getppid())), ("Content-Length", str(len(body)))])
    return [body]
