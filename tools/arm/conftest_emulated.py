"""conftest.py for the emulated aarch64 test run (tools/arm_test.sh copies it to the run folder).

It refuses to run unless the interpreter is aarch64 and the kernels come from the installed
cross-built wheel (not a source tree), so a passing run proves what it claims. Hypothesis gets
no per-example deadline: under qemu-user everything is 10-50x slower than on the host, and a
deadline would fail tests for speed, not correctness. Example counts are unchanged.
"""
import importlib
import os
import platform
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    machine = platform.machine()
    if machine != "aarch64":
        pytest.exit(f"emulated run expects an aarch64 interpreter, got {machine!r}", returncode=3)
    site = Path(os.environ["IONSTREAM_ARM_SITE"]).resolve()
    import cext

    kernels = sorted(p.stem for p in Path(cext.__file__).parent.glob("*.pyx"))
    for name in kernels:
        mod = importlib.import_module(f"cext.{name}")
        f = Path(mod.__file__).resolve()
        if site not in f.parents or not f.name.endswith("-aarch64-linux-gnu.so"):
            pytest.exit(f"cext.{name} loaded from {f}, not the installed aarch64 wheel", returncode=3)
    session.config._arm_kernels = kernels


def pytest_report_header(config):
    import numpy
    import scipy

    return [f"emulated {platform.machine()} (qemu-user), Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, scipy {scipy.__version__}",
            f"kernels from the wheel: {', '.join(getattr(config, '_arm_kernels', []))}"]


try:
    from hypothesis import settings

    settings.register_profile("emulated", deadline=None)
    settings.load_profile("emulated")
except ImportError:
    pass
