"""Helpers for tests that drive real server processes: start, load, restart."""

import ctypes
import http.client
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Every generation (each a child of the previous one) is reparented to us
    when its parent exits, so we can reap it and prove it is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def get(port: int, conn: http.client.HTTPConnection = None, close: bool = True):
    """One GET; returns (pid, generation, response headers)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Connection": "close" if close else "keep-alive"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise OSError(f"status {response.status}")
        return int(response.getheader("X-Pid")), int(response.getheader("X-Generation")), response
    finally:
        if own:
            conn.close()


class Load:
    """Client threads, keep-alive and one-connection-per-request, counting every failure."""

    def __init__(self, port: int, keep_alive: int = 3, close: int = 3):
        self.port, self.ok, self.failures = port, 0, []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i < keep_alive,)) for i in range(keep_alive + close)]
        for t in self.threads:
            t.start()

    def client(self, keep_alive: bool) -> None:
        conn = None
        deadline = time.monotonic() + 300  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                if keep_alive:
                    conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    _, _, response = get(self.port, conn, close=False)
                    if response.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                else:
                    get(self.port)
                with self.lock:
                    self.ok += 1
            except Exception as e:  # every failure counts
                if conn is not None:
                    conn.close()
                    conn = None
                with self.lock:
                    self.failures.append(repr(e))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.ok, self.failures


def wait_exit(pid: int, timeout: float) -> bool:
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


class Server:
    """An example server started as `python SCRIPT 127.0.0.1:0`."""

    def __init__(self, script: Path, env=None):
        become_subreaper()
        self.process = subprocess.Popen(
            [sys.executable, str(script), "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "GRESTART_LOG": "warn", **(env or {})},
        )
        line = self.process.stdout.readline().decode()
        assert "listening on" in line, line
        # Every generation inherits stdout: keep draining it, or a successor
        # writing its first line would get SIGPIPE.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.port = int(line.rsplit(":", 1)[1])
        self.pid, self.generation = get(self.port)[:2]
        self.pids = [self.pid]

    def restart(self, signal_number: int) -> float:
        """Signals a restart and waits until a new pid answers and the old one exited."""
        old, started = self.pid, time.monotonic()
        os.kill(old, signal_number)
        while True:
            pid, generation, _ = get(self.port)
            if pid != old:
                break
            assert time.monotonic() - started < 20, f"pid {old} never handed over"
        latency = time.monotonic() - started
        assert generation == self.generation + 1
        self.pid, self.generation = pid, generation
        self.pids.append(pid)
        assert wait_exit(old, 40), f"generation pid {old} did not exit after draining"
        os.waitpid(old, 0)
        return latency

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.process.wait()


@pytest.fixture
def python_server():
    servers = []

    def start(script: str, env=None) -> Server:
        server = Server(REPO / "examples" / "python" / script, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
