"""The Python API: types, errors, and what an heir sees of its environment."""

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import grestart


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
        for bad in ["", "a:b", "x" * 256, "tab\there"]:
            with pytest.raises(OSError) as e:
                grestart.register_listener(s, bad)
            assert e.value.errno == errno.EINVAL
        grestart.register_listener(s, "api-test")
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


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, **kwargs)


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


def test_heir_environment_is_cleaned_and_sockets_do_not_leak():
    # Start a Python process the way a grestart parent (or systemd) would: a
    # listening socket at fd 3 and the LISTEN_* variables naming this very pid
    # (exec keeps the pid, so the launcher sets LISTEN_PID to its own).
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
    launcher = textwrap.dedent(f"""
        import os, socket, sys
        s = socket.create_server(("127.0.0.1", 0))
        if s.fileno() == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(s.fileno(), 3)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
        os.execv(sys.executable, [sys.executable, "-c", {heir!r}])
    """)
    result = run_python(launcher, pass_fds=())
    assert result.returncode == 0, result.stderr
    assert "heir ok 1" in result.stdout
