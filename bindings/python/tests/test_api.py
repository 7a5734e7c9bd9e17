"""The Python API: types, errors, and what an heir sees of its environment."""

import errno
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import grestart
from conftest import run_python


def test_version_and_generation():
    assert grestart.__version__.count(".") == 2
    assert grestart.generation() == 1


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError):
        grestart.register_listener("not a socket", "web")
    with pytest.raises(TypeError):
        grestart.register_listener(socket.socket(), b"bytes name")
    with pytest.raises(TypeError):
        grestart.inherit_listener(42)
    with pytest.raises(TypeError):
        grestart.listen(("127.0.0.1", "80"))
    with pytest.raises(TypeError):
        grestart.on_shutdown("not callable")
    with pytest.raises(TypeError):
        grestart.set_signal("SIGUSR1")


def test_bad_sockets_raise_os_error_with_errno():
    closed = socket.socket()
    fd = closed.detach()
    os.close(fd)
    with pytest.raises(OSError) as e:
        grestart.register_listener(fd, "web")
    assert e.value.errno == errno.EBADF and "not open" in str(e.value)
    with open("/dev/null") as f, pytest.raises(OSError) as e:
        grestart.register_listener(f, "web")
    assert e.value.errno == errno.ENOTSOCK
    with socket.socket() as unlistening, pytest.raises(OSError) as e:
        grestart.register_listener(unlistening, "web")
    assert e.value.errno == errno.EINVAL and "not listening" in str(e.value)


def test_names_are_checked():
    with socket.create_server(("127.0.0.1", 0)) as s:
        for bad in ["", "a:b", "x" * (grestart.NAME_MAX + 1), "tab\there"]:
            with pytest.raises(OSError) as e:
                grestart.register_listener(s, bad)
            assert e.value.errno == errno.EINVAL
        grestart.register_listener(s, "api-test")
        grestart.register_listener(s, "x" * grestart.NAME_MAX)
        with pytest.raises(OSError) as e:
            grestart.register_listener(s, "api-test")
        assert e.value.errno == errno.EEXIST


def test_fresh_start_inherits_nothing_and_listen_binds():
    assert grestart.inherit_listener("nothing-here") is None
    s = grestart.listen(("127.0.0.1", 0), "api-listen")
    assert s.type == socket.SOCK_STREAM and s.getsockname()[1] != 0
    assert not s.get_inheritable()
    with pytest.raises(OSError) as e:
        grestart.listen("ftp://127.0.0.1:21")
    assert e.value.errno == errno.EINVAL


def test_bad_signals_and_settings():
    for bad in [signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, 0, 99]:
        with pytest.raises(OSError) as e:
            grestart.set_signal(bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        grestart.set_log_level(9)
    with pytest.raises(OSError):
        grestart.set_ready_timeout(0)
    with pytest.raises(OSError) as e:
        grestart.restart()  # not ready yet
    assert e.value.errno == errno.EAGAIN
    assert grestart.wait_shutdown(timeout=0) is False


def run_as_heir(code: str, restart_signal: int = 0) -> subprocess.CompletedProcess:
    """Runs ``code`` the way a grestart parent (or systemd) starts an heir: a
    listening socket at fd 3 and the LISTEN_* variables naming this very pid
    (exec keeps the pid, so the launcher sets LISTEN_PID to its own); with
    ``restart_signal``, that signal ignored and named in GRESTART_SIGNAL."""
    launcher = textwrap.dedent(f"""
        import os, signal, socket, sys
        s = socket.create_server(("127.0.0.1", 0))
        if s.fileno() == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(s.fileno(), 3)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
        if {restart_signal}:
            signal.signal({restart_signal}, signal.SIG_IGN)
            os.environ["GRESTART_SIGNAL"] = "{restart_signal}"
        os.execv(sys.executable, [sys.executable, "-c", {textwrap.dedent(code)!r}])
    """)
    return run_python(launcher, pass_fds=())


def test_hooks_run_once_in_reverse_and_exceptions_are_reported():
    result = run_python("""
        import grestart
        order = []
        grestart.on_shutdown(lambda: order.append(1))
        @grestart.on_shutdown
        def boom():
            raise RuntimeError("hook failed on purpose")
        grestart.on_shutdown(lambda: order.append(3))
        grestart.ready()
        grestart.shutdown()
        grestart.shutdown()
        assert order == [3, 1], order
        assert grestart.wait_shutdown(timeout=0) is True
        try:
            grestart.on_shutdown(lambda: None)
        except OSError as e:
            print("refused", e.errno)
    """)
    assert result.returncode == 0, result.stderr
    assert "hook failed on purpose" in result.stderr
    assert "refused 108" in result.stdout  # ESHUTDOWN


def test_a_hook_may_call_shutdown():
    # A cleanup helper registered as a hook may end with grestart.shutdown():
    # from the hook's own thread it returns at once; another thread's call
    # returns once the hooks have finished.
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import threading, time, grestart
        done = []
        started = threading.Event()

        @grestart.on_shutdown
        def cleanup():
            started.set()
            grestart.shutdown()
            time.sleep(0.2)  # the other caller must wait for this
            done.append("hook")

        def other():
            started.wait(10)
            grestart.shutdown()
            print("other thread after", done, flush=True)

        grestart.ready()
        helper = threading.Thread(target=other)
        helper.start()
        grestart.shutdown()
        helper.join()
        print("main after", done, flush=True)
    """)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "other thread after ['hook']" in result.stdout, result.stdout
    assert "main after ['hook']" in result.stdout, result.stdout


def test_heir_environment_is_cleaned_and_sockets_do_not_leak():
    heir = textwrap.dedent("""
        import os, subprocess, sys
        import grestart
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            assert name not in os.environ, name
        s = grestart.inherit_listener("web")
        assert s is not None and s.fileno() == 3, s
        assert not os.get_inheritable(3)
        env = subprocess.run(["env"], capture_output=True, text=True, close_fds=False).stdout
        assert "LISTEN_" not in env, env
        # A program the heir launches (without closing fds) must not hold the socket.
        probe = "import os, sys\\ntry: print(os.fstat(3).st_ino == int(sys.argv[1]))\\nexcept OSError: print(False)"
        out = subprocess.run([sys.executable, "-c", probe, str(os.fstat(3).st_ino)],
                             capture_output=True, text=True, close_fds=False).stdout.strip()
        assert out == "False", out
        print("heir ok", grestart.generation())
    """)
    result = run_as_heir(heir)
    assert result.returncode == 0, result.stderr
    assert "heir ok 1" in result.stdout


def test_import_grestart_imports_neither_asyncio_nor_a_framework():
    # asyncio alone costs more than the rest of `import grestart`, and every
    # restart of a Python server pays its imports again. The cost itself is a
    # number to read (printed), not a timed assertion.
    result = run_python("""
        import sys
        import grestart
        assert "asyncio" not in sys.modules, "asyncio imported"
        for framework in ("aiohttp", "uvicorn"):
            assert framework not in sys.modules, f"{framework} imported"
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    timed = subprocess.run([sys.executable, "-X", "importtime", "-c", "import grestart"],
                           capture_output=True, text=True, timeout=60)
    line = next(l for l in timed.stderr.splitlines() if l.rstrip().endswith("| grestart"))
    print(f"import grestart, cumulative (-X importtime): {int(line.split('|')[1]) / 1000:.1f} ms")


def blocked_signals(pid: int, tid: int) -> int:
    """The SigBlk mask of thread ``tid`` of process ``pid``."""
    with open(f"/proc/{pid}/task/{tid}/status") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk:"))


def test_wait_shutdown_lets_ctrl_c_through():
    # SIGINT is set to Python's handler in the child: a test run started in the
    # background of a shell (or by a CI runner) inherits SIGINT ignored, and
    # then Python installs no handler and Ctrl-C never raises, grestart or not.
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import signal
            signal.signal(signal.SIGINT, signal.default_int_handler)
            import grestart
            try:
                print("waiting", flush=True)
                grestart.wait_shutdown()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
        """)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "waiting\n"
        deadline = time.monotonic() + 10
        while "poll" not in open(f"/proc/{child.pid}/wchan").read():  # blocked in the wait
            assert time.monotonic() < deadline, "the child never blocked"
            time.sleep(0.001)
        # The kernel gives a process-directed signal to a thread that does not
        # block it, and CPython acts on it only in its main thread: every other
        # thread (grestart's) must block SIGINT, or Ctrl-C may be lost.
        others = [int(tid) for tid in os.listdir(f"/proc/{child.pid}/task") if int(tid) != child.pid]
        assert others, "grestart runs a thread of its own"
        sigint = 1 << (signal.SIGINT - 1)
        for tid in others:
            assert blocked_signals(child.pid, tid) & sigint, f"thread {tid} takes SIGINT"
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        assert select.select([child.stdout], [], [], 10)[0], "no KeyboardInterrupt within 10 s"
        assert child.stdout.readline() == "interrupted\n"
        print(f"KeyboardInterrupt after {(time.monotonic() - started) * 1000:.1f} ms")
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()


def test_any_number_of_asyncio_waiters_wake():
    result = run_python("""
        import asyncio, grestart

        async def main():
            waiters = [asyncio.create_task(grestart.shutdown_requested()) for _ in range(3)]
            cancelled = asyncio.create_task(grestart.shutdown_requested())
            await asyncio.sleep(0)
            cancelled.cancel()  # must not cancel the others' wait
            grestart.ready()
            asyncio.get_running_loop().call_soon(grestart.shutdown)
            await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
            await asyncio.wait_for(grestart.shutdown_requested(), timeout=10)  # a late one too
            print("all woke")

        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr
    assert "all woke" in result.stdout


def test_the_probation_asked_for_reaches_the_launcher_with_ready():
    # The launcher's end of NOTIFY_SOCKET, as `grestart run` holds it.
    name = f"grestart-test-probation-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(20)
    with listener:
        result = run_python("""
            import grestart
            try:
                grestart.set_probation(-1)
            except ValueError:
                print("negative refused")
            grestart.set_probation(2.5)
            grestart.ready()
            grestart.shutdown()
        """, env={**os.environ, "NOTIFY_SOCKET": "@" + name})
        assert result.returncode == 0, result.stderr
        assert "negative refused" in result.stdout
        ready = listener.recv(4096).decode()
    assert "READY=1" in ready.splitlines()
    assert "X_GRESTART_PROBATION_MS=2500" in ready.splitlines()


def test_a_zero_drain_deadline_is_none_as_in_every_language():
    result = run_python("""
        import grestart
        try:
            grestart.set_drain_deadline(-1)
        except ValueError:
            print("negative refused")
        grestart.set_drain_deadline(0)
        grestart.ready()
        grestart.shutdown()
    """, env={**os.environ, "GRESTART_LOG": "info"})
    assert result.returncode == 0, result.stderr
    assert "negative refused" in result.stdout
    assert "draining (no deadline)" in result.stderr, result.stderr


def test_the_drain_deadline_keeps_buffered_output():
    # Work that never ends: the drain deadline ends the process with _exit,
    # which alone would lose what Python buffers in sys.stdout (a pipe here).
    result = run_python("""
        import sys, threading, grestart
        grestart.set_drain_deadline(0.2)
        grestart.ready()
        grestart.in_flight().__enter__()
        sys.stdout.write("buffered line\\n")
        threading.Thread(target=grestart.shutdown, daemon=True).start()
        threading.Event().wait(20)  # the deadline exits first
        print("not reached")
    """, env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    assert result.returncode == 0, result.stderr
    assert "buffered line" in result.stdout, result.stdout
    assert "not reached" not in result.stdout


def test_an_heir_takes_over_the_ignored_restart_signal():
    # A grestart parent starts its successor with the restart signal ignored
    # (GRESTART_SIGNAL names it); the heir's grestart then handles it, and gives
    # it back its default disposition, not "ignored", when the application
    # chooses another restart signal.
    heir = textwrap.dedent("""
        import os, signal, time
        import grestart
        assert "GRESTART_SIGNAL" not in os.environ
        grestart.set_signal(signal.SIGHUP)
        print("switched", flush=True)
        os.kill(os.getpid(), signal.SIGUSR2)  # default again: this ends the process
        time.sleep(5)
        print("survived SIGUSR2")
    """)
    result = run_as_heir(heir, restart_signal=int(signal.SIGUSR2))
    assert "switched" in result.stdout, result.stderr
    assert result.returncode == -signal.SIGUSR2, (result.returncode, result.stdout, result.stderr)


def test_incoming_ends_on_drain_and_shutdown_waits_for_open_connections():
    result = run_python("""
        import socket, threading, time, grestart
        listener = grestart.listen(("127.0.0.1", 0))
        finished, accepted = [], threading.Event()
        grestart.on_shutdown(lambda: print("hook sees", finished, flush=True))
        grestart.ready()

        def serve(conn):
            accepted.set()
            with conn:
                conn.recv(100)
                time.sleep(0.3)
                conn.sendall(b"answer")
                finished.append("served")

        def client_then_shutdown():
            with socket.create_connection(listener.getsockname()) as c:
                c.sendall(b"question")
                assert accepted.wait(10)
                grestart.shutdown()  # drains: the accept loop ends; waits for serve()
                print("client got", c.recv(100), flush=True)

        threading.Thread(target=client_then_shutdown).start()
        threads = []
        for conn in grestart.incoming(listener):
            threads.append(threading.Thread(target=serve, args=(conn,)))
            threads[-1].start()
        print("accept loop ended after", len(threads), flush=True)
        for t in threads:
            t.join()
    """)
    assert result.returncode == 0, result.stderr
    assert "accept loop ended after 1" in result.stdout
    assert "hook sees ['served']" in result.stdout, result.stdout
    assert "client got b'answer'" in result.stdout


def test_a_connection_dropped_unclosed_ends_its_work():
    # A Connection garbage-collected without close() (an exception in a
    # handler, a forgotten close) must not leave shutdown() waiting forever.
    result = subprocess.run([sys.executable, "-W", "ignore::ResourceWarning", "-c", textwrap.dedent("""
        import gc, socket, grestart
        listener = grestart.listen(("127.0.0.1", 0))
        grestart.ready()
        client = socket.create_connection(listener.getsockname())
        conn = grestart.accept(listener)
        assert isinstance(conn, grestart.Connection)
        del conn
        gc.collect()
        grestart.shutdown()
        print("shutdown returned", flush=True)
    """)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "shutdown returned" in result.stdout


def test_grestart_lines_go_to_the_logging_module():
    result = run_python("""
        import logging, grestart
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append((record.name, record.levelname, record.getMessage()))

        logging.getLogger("grestart").addHandler(Keep())
        logging.getLogger("grestart").setLevel(logging.DEBUG)
        grestart.use_logging()
        grestart.set_log_level(grestart.LogLevel.INFO)
        grestart.ready()
        grestart.shutdown()
        print(records)
        assert ("grestart", "INFO", "ready, generation 1") in records, records
        assert all(level != "DEBUG" for _, level, _ in records), records
    """)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hand_over_without_a_successor_says_so_and_adopt_finds_nothing():
    a, b = socket.socketpair()
    with a, b:
        # Not draining, no successor: the caller closes the connection itself.
        assert grestart.hand_over(a) is False
        with pytest.raises(TypeError):
            grestart.hand_over("not a socket")
        with pytest.raises(TypeError):
            grestart.hand_over(a, b"bytes name")
    assert isinstance(grestart.adopt_fd(), int)
    assert grestart.adopt(0) is None  # a fresh start: nothing is ever handed over
    started = time.monotonic()
    assert grestart.adopt(0.05) is None
    assert time.monotonic() - started >= 0.05
