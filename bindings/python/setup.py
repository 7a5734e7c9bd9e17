"""Builds libgrestart.so and the launcher with cargo and ships them inside the
package (the launcher as `grestart/bin/grestart`, on PATH as `grestart`).

The Rust crate is found beside this file in `rust/` (an sdist made by
scripts/build-wheel carries it there) or two directories up (the repository,
for `pip install ./bindings/python`). Needs cargo on PATH; CARGO_TARGET_DIR is
honoured. The wheel holds a plain shared library loaded with ctypes, so it
fits every Python 3 and is tagged for the platform only: py3-none-PLATFORM.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
CRATE = HERE / "rust" if (HERE / "rust" / "Cargo.toml").exists() else HERE.parents[1]


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        target = Path(os.environ.get("CARGO_TARGET_DIR", CRATE / "target"))
        subprocess.check_call(
            ["cargo", "build", "--release", "--lib", "--bin", "grestart",
             "--manifest-path", str(CRATE / "Cargo.toml")],
            env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        )
        package = Path(self.build_lib) / "grestart"
        (package / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / "release" / "libgrestart.so", package / "libgrestart.so")
        shutil.copy(target / "release" / "grestart", package / "bin" / "grestart")  # keeps +x


class NativeDistribution(Distribution):
    """The wheel holds a native library: a platform wheel, never 'any'."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """No Python extension inside: any Python 3 on this platform loads it."""

    def get_tag(self):
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


setup(
    cmdclass={"build_py": BuildWithLibrary, "bdist_wheel": PlatformWheel},
    distclass=NativeDistribution,
)
