"""Builds libgrestart.so with cargo and ships it inside the package.

`pip install ./bindings/python` runs this in place (pip >= 21.3 builds in the
source tree), so the Rust crate two directories up is at hand. Needs cargo on
PATH; CARGO_TARGET_DIR is honoured.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parents[2]


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        subprocess.check_call(
            ["cargo", "build", "--release", "--lib", "--manifest-path", str(ROOT / "Cargo.toml")]
        )
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        destination = Path(self.build_lib) / "grestart" / "libgrestart.so"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / "release" / "libgrestart.so", destination)


class NativeDistribution(Distribution):
    """The wheel holds a native library: tag it for this platform, not 'any'."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithLibrary}, distclass=NativeDistribution)
