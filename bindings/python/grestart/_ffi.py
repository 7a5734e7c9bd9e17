"""The ctypes layer: loads libgrestart.so and declares every C function.

`SIGNATURES` and `CONSTANTS` mirror include/grestart.h; tests/test_header.py
fails when they drift apart.
"""

import ctypes
import os

c_int, c_char_p, c_void_p, c_int64, c_uint64 = (
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_uint64,
)

HOOK = ctypes.CFUNCTYPE(None, c_void_p)
LOG = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)

# name: (restype, argtypes)
SIGNATURES = {
    "gr_register_listener": (c_int, [c_int, c_char_p]),
    "gr_inherit_listener": (c_int, [c_char_p]),
    "gr_listen": (c_int, [c_char_p, c_char_p]),
    "gr_on_shutdown": (c_int, [HOOK, c_void_p]),
    "gr_set_signal": (c_int, [c_int]),
    "gr_set_stop_signal": (c_int, [c_int]),
    "gr_ready": (c_int, []),
    "gr_restart": (c_int, []),
    "gr_shutdown_fd": (c_int, []),
    "gr_wait_shutdown": (c_int, [c_int]),
    "gr_accept": (c_int, [c_int]),
    "gr_work_begin": (c_int, []),
    "gr_work_end": (c_int, []),
    "gr_hand_over": (c_int, [c_int, c_char_p]),
    "gr_successor_adopts": (c_int, []),
    "gr_idle_fd": (c_int, []),
    "gr_adopt_fd": (c_int, []),
    "gr_adopt": (c_int, [c_char_p, ctypes.c_size_t, c_int]),
    "gr_adopt_counted": (c_int, [c_char_p, ctypes.c_size_t, c_int]),
    "gr_shutdown": (c_int, []),
    "gr_generation": (c_int64, []),
    "gr_set_ready_timeout_ms": (c_int, [c_uint64]),
    "gr_set_drain_deadline_ms": (c_int, [c_uint64]),
    "gr_set_probation_ms": (c_int, [c_uint64]),
    "gr_set_pid_file": (c_int, [c_char_p]),
    "gr_set_executable": (c_int, [c_char_p, ctypes.POINTER(c_char_p)]),
    "gr_set_log_level": (c_int, [c_int]),
    "gr_set_log_callback": (c_int, [LOG, c_void_p]),
    "gr_last_error": (c_char_p, []),
    "gr_version": (c_char_p, []),
}

# The header's limits and defaults (its GR_* macros but the log levels, which
# are LogLevel, and the version).
CONSTANTS = {
    "GR_NAME_MAX": 255,
    "GR_DEFAULT_READY_TIMEOUT_MS": 60_000,
    "GR_HAND_OVER_BOUND_MS": 2_000,
    "GR_DEFAULT_IDLE_GRACE_MS": 2_000,
    "GR_MAX_DRAINING": 8,
}


def _load() -> ctypes.CDLL:
    override = os.environ.get("GRESTART_LIBRARY")
    path = override or os.path.join(os.path.dirname(__file__), "libgrestart.so")
    if not os.path.exists(path):
        where = "GRESTART_LIBRARY" if override else "the grestart package"
        raise ImportError(
            f"libgrestart.so not found at {path} (from {where}); reinstall with "
            "`pip install ./bindings/python` or set GRESTART_LIBRARY to the library's path"
        )
    library = ctypes.CDLL(path, use_errno=True)
    for name, (restype, argtypes) in SIGNATURES.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    return library


lib = _load()


def check(result: int) -> int:
    """Raises OSError(errno, message) for a failed call; returns the result otherwise."""
    if result < 0:
        errno = ctypes.get_errno()
        message = (lib.gr_last_error() or b"").decode("utf-8", "replace")
        raise OSError(errno, message)
    return result
