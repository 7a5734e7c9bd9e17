"""The `grestart` command of the Python package: execs the launcher binary
shipped inside it (see `grestart --help`), so that the launcher keeps this
process's pid (a container's PID 1 stays PID 1)."""

import os
import sys
from pathlib import Path


def main() -> None:
    launcher = Path(__file__).with_name("bin") / "grestart"
    os.execv(launcher, [str(launcher), *sys.argv[1:]])
