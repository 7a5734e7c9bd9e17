"""The ctypes declarations and constants match include/grestart.h exactly."""

import ctypes
import re

from grestart import _ffi

from conftest import REPO

C_TYPES = {
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "const char *": ctypes.c_char_p,
    "char *": ctypes.c_char_p,
    "size_t": ctypes.c_size_t,
    "void *": ctypes.c_void_p,
    "const char *const *": ctypes.POINTER(ctypes.c_char_p),
    "gr_hook_fn": _ffi.HOOK,
    "gr_log_fn": _ffi.LOG,
}


def header_functions():
    text = (REPO / "include" / "grestart.h").read_text()
    functions = {}
    for ret, name, args in re.findall(r"^([\w ]+?\s*\*?)\s*(gr_\w+)\((.*?)\);", text, re.M | re.S):
        params = [] if args.strip() == "void" else [re.sub(r"\s*\w+$", "", a.strip()) for a in args.split(",")]
        functions[name] = (ret.strip(), params)
    return functions


def test_every_function_is_declared_with_the_header_types():
    functions = header_functions()
    assert set(functions) == set(_ffi.SIGNATURES), "functions added or removed: update _ffi.SIGNATURES"
    for name, (ret, params) in functions.items():
        restype, argtypes = _ffi.SIGNATURES[name]
        assert C_TYPES[ret] is restype or C_TYPES[ret] == restype, f"{name} returns {ret}"
        assert len(params) == len(argtypes), f"{name} takes {params}"
        for param, argtype in zip(params, argtypes):
            expected = C_TYPES[param]
            assert expected is argtype or expected == argtype, f"{name}: {param} declared as {argtype}"


def header_macros() -> "dict[str, int]":
    """The header's numeric GR_* macros."""
    text = (REPO / "include" / "grestart.h").read_text()
    return {name: int(value) for name, value in re.findall(r"^#define (GR_\w+) (\d+)$", text, re.M)}


def test_every_limit_and_default_is_the_headers():
    limits = {name: value for name, value in header_macros().items() if not name.startswith(("GR_LOG_", "GR_VERSION_"))}
    assert limits == _ffi.CONSTANTS, "a GR_ limit or default changed: update _ffi.CONSTANTS"


def test_log_levels_are_the_headers():
    import grestart

    levels = {name[len("GR_LOG_"):]: value for name, value in header_macros().items() if name.startswith("GR_LOG_")}
    assert levels == {level.name: level.value for level in grestart.LogLevel}
