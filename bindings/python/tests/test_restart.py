"""Real restarts of both Python examples under concurrent load."""

import os
import signal
import time

import pytest

from conftest import Load, get, wait_exit

RESTARTS = 10


@pytest.mark.parametrize("script", ["http_server.py", "asyncio_server.py", "quickstart.py"])
def test_restarts_under_load_lose_nothing(python_server, script):
    server = python_server(script)
    load = Load(server.port)
    latencies = [server.restart(signal.SIGUSR2) for _ in range(RESTARTS)]
    ok, failures = load.finish()
    print(f"{script}: {ok} requests, {len(failures)} failed, median restart {sorted(latencies)[RESTARTS // 2]:.3f}s")
    assert failures == []
    assert ok > 0
    assert server.generation == 1 + RESTARTS


def children_of(pid: int) -> set:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.add(int(entry))
    return children


def catches(pid: int, signo: int) -> bool:
    """Whether ``pid`` has a handler installed for ``signo`` (SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (signo - 1) & 1)


def test_a_restart_signal_to_every_process_spares_a_starting_successor(python_server):
    # `systemctl kill -s USR2` (or pkill -USR2) signals every process of the
    # service, including a successor that is still importing its modules:
    # signal it over and over until its grestart has installed the handler.
    server = python_server("http_server.py")
    old, started = server.pid, time.monotonic()
    os.kill(old, signal.SIGUSR2)
    signalled_while_starting = set()
    while True:
        for pid in children_of(old):
            if not catches(pid, signal.SIGUSR2):
                os.kill(pid, signal.SIGUSR2)
                signalled_while_starting.add(pid)
        pid, generation, _ = get(server.port)
        if pid != old:
            break
        assert time.monotonic() - started < 20, "no successor took over"
    assert pid in signalled_while_starting, "the successor was signalled while it started"
    print(f"signalled successors: {signalled_while_starting}")
    assert generation == server.generation + 1
    server.pid, server.generation = pid, generation
    server.pids.append(pid)
    assert wait_exit(old, 40)
    os.waitpid(old, 0)
    assert get(server.port)[:2] == (pid, generation), "the successor serves on"
