"""Real restarts of both Python examples under concurrent load."""

import signal

import pytest

from conftest import Load

RESTARTS = 10


@pytest.mark.parametrize("script", ["http_server.py", "asyncio_server.py"])
def test_restarts_under_load_lose_nothing(python_server, script):
    server = python_server(script)
    load = Load(server.port)
    latencies = [server.restart(signal.SIGUSR2) for _ in range(RESTARTS)]
    ok, failures = load.finish()
    print(f"{script}: {ok} requests, {len(failures)} failed, median restart {sorted(latencies)[RESTARTS // 2]:.3f}s")
    assert failures == []
    assert ok > 0
    assert server.generation == 1 + RESTARTS
