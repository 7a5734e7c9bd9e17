"""What the Python API tests share. The restarts of the Python examples under
load run from the one test kit every language uses (testkit/, in Rust):
see tests/restart.rs and tests/field.rs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
