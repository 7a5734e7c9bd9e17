"""Graceful (hot) restart for Linux servers.

On SIGUSR2 (or :func:`restart`) the running server starts the program on disk
again, hands it its listening sockets, and once the new process calls
:func:`ready`, drains: it stops accepting, finishes what it accepted, runs its
shutdown hooks and exits. No connection is refused, no accepted request lost.

Every function raises :class:`OSError` with the errno and grestart's message
on failure, and may be called from any thread.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import os
import select
import socket
import sys
import weakref
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

# asyncio and traceback are imported where they are used: asyncio alone costs
# more than the rest of `import grestart`, and every restart pays the imports.

from ._ffi import CONSTANTS, HOOK, LOG, check, lib

__all__ = [
    "register_listener",
    "inherit_listener",
    "listen",
    "on_shutdown",
    "set_signal",
    "set_stop_signal",
    "ready",
    "restart",
    "shutdown_fd",
    "wait_shutdown",
    "shutdown_requested",
    "draining",
    "accept",
    "incoming",
    "Connection",
    "in_flight",
    "hand_over",
    "successor_adopts",
    "idle_fd",
    "adopt_fd",
    "adopt",
    "shutdown",
    "generation",
    "set_ready_timeout",
    "set_drain_deadline",
    "set_probation",
    "set_pid_file",
    "set_executable",
    "set_log_level",
    "set_logger",
    "use_logging",
    "LogLevel",
    "LOG_OFF",
    "LOG_ERROR",
    "LOG_WARN",
    "LOG_INFO",
    "LOG_DEBUG",
    "NAME_MAX",
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_IDLE_GRACE",
    "__version__",
]

class LogLevel(enum.IntEnum):
    """grestart's log levels, the ``GR_LOG_*`` values of grestart.h (a test
    checks they agree)."""

    OFF = 0
    ERROR = 1
    WARN = 2
    INFO = 3
    DEBUG = 4


LOG_OFF, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG = LogLevel

# grestart.h's limits and defaults (see their comments there), in Python's units.
NAME_MAX: int = CONSTANTS["GR_NAME_MAX"]  # bytes of a listener name, at most
DEFAULT_READY_TIMEOUT: float = CONSTANTS["GR_DEFAULT_READY_TIMEOUT_MS"] / 1000  # seconds
DEFAULT_IDLE_GRACE: float = CONSTANTS["GR_DEFAULT_IDLE_GRACE_MS"] / 1000  # seconds, the adapters' idle_grace

__version__: str = lib.gr_version().decode()

_GENERATION = check(lib.gr_generation())  # starts the engine: it reads the hand-over now


def _forget_what_the_library_consumed() -> None:
    """The library removes the hand-over variables from the C environment when
    it starts; Python's copy must lose them too, or a subprocess started with
    os.environ would think it was socket-activated. Whatever the C environment
    no longer has is dropped, so no list of names is kept twice."""
    getenv = ctypes.CDLL(None).getenv
    getenv.restype, getenv.argtypes = ctypes.c_char_p, [ctypes.c_char_p]
    for name in [n for n in os.environ if getenv(os.fsencode(n)) is None]:
        os.environ.pop(name, None)


_forget_what_the_library_consumed()


def _flush_standard_streams(_arg: Optional[int]) -> None:
    """The last shutdown hook (the first registered): when the drain deadline
    ends the process with ``_exit``, what Python still buffers in
    sys.stdout and sys.stderr would be lost."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed stream: nothing to save
            pass


_FLUSH_HOOK = HOOK(_flush_standard_streams)
lib.gr_on_shutdown(_FLUSH_HOOK, None)  # refused in a forked worker: its master's deadline

# ctypes callbacks must stay alive as long as C may call them.
_keep_alive: list = []

Address = Union[str, Tuple[str, int]]


def _name(name: object, what: str = "name") -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    return name.encode()


def _fd(sock: object) -> int:
    if isinstance(sock, int) and not isinstance(sock, bool):
        return sock
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise TypeError(f"expected a socket or an fd, not {type(sock).__name__}")
    return fileno()


def register_listener(sock: Union[socket.socket, int], name: str) -> None:
    """Hands ``sock`` (a listening socket, or a UDP socket) to every future
    successor under ``name``. grestart keeps its own duplicate."""
    fd, name_bytes = _fd(sock), _name(name)
    check(lib.gr_register_listener(fd, name_bytes))


def inherit_listener(name: str) -> Optional[socket.socket]:
    """The socket the previous generation registered as ``name`` (registered
    again for the next restart), or ``None`` on a fresh start."""
    name_bytes = _name(name)
    fd = lib.gr_inherit_listener(name_bytes)
    if fd < 0 and ctypes.get_errno() == errno.ENOENT:
        return None
    return socket.socket(fileno=check(fd))


def _address(address: Address, kind: str) -> str:
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str) or not isinstance(address[1], int):
            raise TypeError("address must be (host: str, port: int)")
        host, port = address
        host = f"[{host}]" if ":" in host else host
        return f"{kind}://{host}:{port}"
    if not isinstance(address, (str, os.PathLike)):
        raise TypeError(f"address must be a str, a path or (host, port), not {type(address).__name__}")
    text = os.fspath(address)
    if "://" in text or text.startswith("unix:"):
        return text
    return f"unix:{text}"  # a filesystem path, or @name for the abstract namespace


def listen(address: Address, name: Optional[str] = None, *, kind: str = "tcp") -> socket.socket:
    """Inherit-or-listen: the inherited socket bound to ``address``, or a new
    one bound (and listening) now; registered for the next restart either way.

    ``address`` is ``("0.0.0.0", 8080)`` (``kind`` "tcp" or "udp"), a Unix socket
    path, ``"@abstract"``, or a full grestart address like ``"tcp6://[::1]:8080"``.
    """
    text = _address(address, kind).encode()
    name_bytes = None if name is None else _name(name)
    return socket.socket(fileno=check(lib.gr_listen(text, name_bytes)))


def on_shutdown(hook: Callable[[], object]) -> Callable[[], object]:
    """Runs ``hook()`` once when this process shuts down (hooks run in reverse
    order of registration). Usable as a decorator. An exception in a hook is
    printed to stderr and the other hooks still run."""
    if not callable(hook):
        raise TypeError("the shutdown hook must be callable")

    def run(_arg: Optional[int]) -> None:
        try:
            hook()
        except BaseException:  # never let it reach C
            import traceback

            print(f"grestart: shutdown hook {hook!r} raised:", file=sys.stderr)
            traceback.print_exc()

    callback = HOOK(run)
    check(lib.gr_on_shutdown(callback, None))
    _keep_alive.append(callback)
    return hook


def set_signal(signo: int) -> None:
    """Makes ``signo`` (e.g. ``signal.SIGHUP``) the restart signal (default SIGUSR2)."""
    if not isinstance(signo, int):
        raise TypeError("signo must be an int or a signal.Signals")
    check(lib.gr_set_signal(int(signo)))


def set_stop_signal(signo: "int | None") -> None:
    """Makes ``signo`` (e.g. ``signal.SIGTERM``) the stop signal (``None``: none,
    the default): it begins the drain, as a hand-over does; see
    ``gr_set_stop_signal`` in grestart.h."""
    if signo is not None and not isinstance(signo, int):
        raise TypeError("signo must be an int, a signal.Signals or None")
    check(lib.gr_set_stop_signal(0 if signo is None else int(signo)))


def ready() -> None:
    """Says this process serves; in a successor the previous generation then drains."""
    check(lib.gr_ready())


def restart() -> int:
    """Restarts now and waits: returns the new generation's pid once it is
    ready (this process then drains); raises OSError when it failed (this
    process serves on)."""
    return check(lib.gr_restart())


def shutdown_fd() -> int:
    """An fd that turns readable when this process must drain. Owned by
    grestart: poll it, never read or close it."""
    return check(lib.gr_shutdown_fd())


def wait_shutdown(timeout: Optional[float] = None) -> bool:
    """Blocks until this process must drain (True) or ``timeout`` seconds pass
    (False). The wait polls the shutdown fd from Python, so Ctrl-C raises
    KeyboardInterrupt at once, as in any blocking Python call."""
    poller = select.poll()
    poller.register(shutdown_fd(), select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))


def draining() -> bool:
    """Whether this process must drain (a successor serves), without waiting."""
    return check(lib.gr_wait_shutdown(0)) == 1


# One future per event loop, resolved when the shutdown fd turns readable:
# the loop has one reader per fd, so every waiter shares it.
_shutdown_futures: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


async def shutdown_requested() -> None:
    """Waits, in asyncio, until this process must drain. Any number of tasks
    may wait at once; cancelling one leaves the others waiting."""
    import asyncio

    loop = asyncio.get_running_loop()
    future = _shutdown_futures.get(loop)
    if future is None:
        future = loop.create_future()
        _shutdown_futures[loop] = future
        fd = shutdown_fd()

        def readable() -> None:
            loop.remove_reader(fd)
            if not future.done():
                future.set_result(None)

        loop.add_reader(fd, readable)
    await asyncio.shield(future)


class _Work:
    """One piece of work in flight, counted from its creation and ended once:
    by :meth:`end`, or when it is garbage-collected unended (a connection
    dropped without ``close()``), so that :func:`shutdown` never waits for
    work nobody holds any more."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        check(lib.gr_work_begin())
        self._open = True

    def end(self) -> None:
        if self._open:
            self._open = False
            check(lib.gr_work_end())

    def __del__(self) -> None:
        if self._open:
            self._open = False
            try:
                lib.gr_work_end()  # a finalizer must not raise
            except Exception:  # the interpreter is exiting: nobody waits
                pass


class Connection(socket.socket):
    """A connection from :func:`accept`: a ``socket.socket`` that counts as work
    in flight until it is closed (or detached); :func:`shutdown` waits for it.
    Close it when done, e.g. with ``with conn:``; one garbage-collected unclosed
    ends its work too."""

    _work: Optional[_Work] = None

    def _end_work(self) -> None:
        work, self._work = self._work, None
        if work is not None:
            work.end()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end_work()

    def detach(self) -> int:
        try:
            return super().detach()
        finally:
            self._end_work()


def accept(listener: socket.socket) -> Optional[Connection]:
    """Waits for a connection on ``listener`` and accepts it; ``None`` once this
    process must drain (a successor serves: leave the queue to it).

    The connection is blocking and counts as work in flight until closed. The
    listener is made non-blocking (a flag every generation shares): the
    successor may take a connection between our poll and our accept.
    """
    listener.setblocking(False)
    draining = shutdown_fd()
    poller = select.poll()
    poller.register(draining, select.POLLIN)
    poller.register(listener.fileno(), select.POLLIN)
    while True:
        if draining in dict(poller.poll()):
            return None
        try:
            accepted, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        with accepted:
            work = _Work()
            conn = Connection(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
        conn._work = work
        conn.setblocking(True)
        return conn


def incoming(listener: socket.socket) -> Iterator[Connection]:
    """The connections arriving on ``listener`` until this process must drain::

        for conn in grestart.incoming(listener):
            threading.Thread(target=serve, args=(conn,)).start()  # serve closes conn
        grestart.shutdown()  # waits until every connection was closed
    """
    while True:
        conn = accept(listener)
        if conn is None:
            return
        yield conn


class in_flight:
    """``with grestart.in_flight(): ...`` counts the block as work in flight:
    :func:`shutdown` waits for it (or for the drain deadline)."""

    def __enter__(self) -> "in_flight":
        check(lib.gr_work_begin())
        return self

    def __exit__(self, *exc: object) -> None:
        check(lib.gr_work_end())


def hand_over(sock: Union[socket.socket, int], listener: Optional[str] = None) -> bool:
    """In a draining process, hands the idle connection ``sock``, accepted on
    the listener named ``listener`` (None: the one whose address it was
    accepted on), to the successor, which serves it next.
    True when it did: then close ``sock`` (that closes nothing: grestart holds
    the connection until the successor does, at the latest at exit). False when no successor takes connections (a plain
    shutdown, a failed restart, an older successor): close it as you would
    without grestart. Idle means nothing of it is buffered in this process."""
    fd = _fd(sock)
    name = None if listener is None else _name(listener, "listener")
    if lib.gr_hand_over(fd, name) == 0:
        return True
    if ctypes.get_errno() == errno.ESRCH:
        return False
    check(-1)
    return False  # not reached: check raised


def successor_adopts() -> bool:
    """Whether a ready successor takes the connections handed to it now: a
    draining server then keeps an idle connection for :func:`hand_over`
    rather than answering ``Connection: close``. See ``gr_successor_adopts``."""
    return check(lib.gr_successor_adopts()) == 1


def idle_fd() -> int:
    """An fd readable exactly while no work is in flight in this process
    (:class:`in_flight`, accepted connections, the adapters' connections), for an
    event loop waiting for its last connection as it drains. Owned by grestart:
    poll it, never read or close it. See ``gr_idle_fd``."""
    return check(lib.gr_idle_fd())


def adopt_fd() -> int:
    """An fd readable while connections handed over by the previous generation
    wait for :func:`adopt`, for an event loop (never read or close it). Asking
    for it says this process adopts them: ask before :func:`ready`."""
    return check(lib.gr_adopt_fd())


def adopt(timeout: Optional[float] = 0.0) -> Optional[Tuple[socket.socket, str]]:
    """The next connection handed over by the previous generation and the name
    of the listener it was accepted on, waiting up to ``timeout`` seconds
    (None: as long as it takes) for one; None when none came in time. Serve
    it as a connection just accepted on that listener. Unlike a
    :class:`Connection` it is not counted as work in flight: a server that
    counts its connections for :func:`shutdown` wraps it in :class:`in_flight`."""
    name = ctypes.create_string_buffer(NAME_MAX + 1)  # and its NUL
    milliseconds = -1 if timeout is None else max(0, math.ceil(timeout * 1000))
    fd = lib.gr_adopt(name, len(name), milliseconds)
    if fd < 0 and ctypes.get_errno() == errno.EAGAIN:
        return None
    return socket.socket(fileno=check(fd)), name.value.decode()


def shutdown() -> None:
    """Drains if not already, waits until no work is in flight (every
    :class:`Connection` closed, every :class:`in_flight` block left), then runs
    the shutdown hooks, once. A second caller returns when they have finished;
    a hook that calls it returns at once."""
    check(lib.gr_shutdown())


def generation() -> int:
    """1 for a fresh start, one more with every hand-over."""
    return _GENERATION


def set_ready_timeout(seconds: float) -> None:
    """How long a successor may take to become ready before it is killed
    (default :data:`DEFAULT_READY_TIMEOUT` seconds)."""
    check(lib.gr_set_ready_timeout_ms(int(seconds * 1000)))


def set_drain_deadline(seconds: Optional[float]) -> None:
    """After this long draining, run the hooks and exit anyway (None or 0: no
    deadline, as in every language), sys.stdout and sys.stderr flushed first.
    A positive value is rounded up to whole milliseconds."""
    if seconds is not None and seconds < 0:
        raise ValueError("the drain deadline cannot be negative")
    milliseconds = 0 if not seconds else max(1, math.ceil(seconds * 1000))
    check(lib.gr_set_drain_deadline_ms(milliseconds))


def set_probation(seconds: float) -> None:
    """How long this generation asks ``grestart run`` to keep it on probation
    after it took over (0: none; never called: the launcher's ``--probation``).
    If it dies or fails the health check within that, the launcher starts the
    last good release in its place. Applies from the next :func:`ready`; without
    a launcher it has no effect. Rounded up to whole milliseconds."""
    if seconds < 0:
        raise ValueError("the probation cannot be negative")
    check(lib.gr_set_probation_ms(math.ceil(seconds * 1000)))


def set_pid_file(path: Optional[Union[str, os.PathLike]]) -> None:
    """Each generation writes its pid here, atomically, when it becomes ready."""
    check(lib.gr_set_pid_file(None if path is None else os.fsencode(path)))


def set_executable(path: Union[str, os.PathLike], argv: Optional[Sequence[str]] = None) -> None:
    """Starts successors from ``path`` (with ``argv``, or this process's own)."""
    array = None
    if argv is not None:
        array = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    check(lib.gr_set_executable(os.fsencode(path), array))


def set_log_level(level: int) -> None:
    """A :class:`LogLevel`; the default is GRESTART_LOG, else ``LogLevel.INFO``."""
    check(lib.gr_set_log_level(int(level)))


def set_logger(logger: Optional[Callable[[LogLevel, str], object]]) -> None:
    """Sends grestart's log lines to ``logger(level, line)`` instead of stderr
    (``None``: back to stderr). Called from any thread."""
    if logger is None:
        check(lib.gr_set_log_callback(LOG(), None))
        return

    def forward(level: int, line: bytes, _arg: Optional[int]) -> None:
        try:
            logger(LogLevel(level), line.decode("utf-8", "replace"))
        except BaseException:
            import traceback

            traceback.print_exc()

    callback = LOG(forward)
    check(lib.gr_set_log_callback(callback, None))
    _keep_alive.append(callback)


def use_logging(logger: "Optional[logging.Logger]" = None) -> None:
    """Routes grestart's lines into the standard :mod:`logging` module, to
    ``logger`` (default: the logger named "grestart") at the matching levels.
    grestart's own level (:func:`set_log_level`) still decides what is sent."""
    import logging

    target = logger or logging.getLogger("grestart")
    levels = {
        LogLevel.ERROR: logging.ERROR,
        LogLevel.WARN: logging.WARNING,
        LogLevel.INFO: logging.INFO,
        LogLevel.DEBUG: logging.DEBUG,
    }
    set_logger(lambda level, line: target.log(levels.get(level, logging.INFO), "%s", line))
