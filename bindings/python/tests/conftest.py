"""What the Python API tests share. The restarts of the Python examples under
load run from the one test kit every language uses (testkit/, in Rust):
see tests/restart.rs and tests/field.rs."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``code`` in a Python of its own: what makes a process ready or
    drains it cannot run in the test process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, **kwargs)
