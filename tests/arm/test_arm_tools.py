"""The ARM cross-build helpers (tools/arm/*) on small inputs: fast, no toolchain, no emulator.

The cross build and the emulated kernel tests themselves are tools/cross_build_arm.sh and
tools/arm_test.sh (docs/arm.md); these tests keep their parsing and checking honest.
"""
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def elf(machine: int) -> bytes:
    """A 64-byte little-endian ELF64 header with the given e_machine."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", 3, machine, 1) + bytes(64 - 20)


class TestCheckWheel:
    def wheel(self, tmp_path, files):
        p = tmp_path / "ionstream-0.1.0-cp311-cp311-linux_aarch64.whl"
        with zipfile.ZipFile(p, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return p

    def test_every_kernel_compiled_for_aarch64(self, tmp_path):
        whl = self.wheel(tmp_path, {"cext/a.pyx": "", "cext/b.pyx": "",
                                    "cext/a.cpython-311-aarch64-linux-gnu.so": elf(183),
                                    "cext/b.cpython-311-aarch64-linux-gnu.so": elf(183)})
        r = run(TOOLS / "arm/check_wheel.py", whl)
        assert r.returncode == 0, r.stderr
        assert "2 kernel(s), all compiled for aarch64" in r.stdout

    def test_missing_kernel(self, tmp_path):
        whl = self.wheel(tmp_path, {"cext/a.pyx": "", "cext/b.pyx": "",
                                    "cext/a.cpython-311-aarch64-linux-gnu.so": elf(183)})
        r = run(TOOLS / "arm/check_wheel.py", whl)
        assert r.returncode == 1
        assert "cext/b.pyx has no compiled extension" in r.stderr

    def test_x86_extension_in_an_arm_wheel(self, tmp_path):
        whl = self.wheel(tmp_path, {"cext/a.pyx": "",
                                    "cext/a.cpython-311-aarch64-linux-gnu.so": elf(62)})  # EM_X86_64
        r = run(TOOLS / "arm/check_wheel.py", whl)
        assert r.returncode == 1
        assert "not an aarch64 extension" in r.stderr


class TestVecReport:
    def test_maps_c_lines_to_pyx_lines(self, tmp_path):
        src = tmp_path / "src"
        (src / "cext").mkdir(parents=True)
        (src / "cext/k.pyx").write_text("def f(x):\n    cdef int i\n    for i in range(n):\n        y[i] = x[i]\n")
        c_lines = ["/* head */", "static inline int ion_scale(float *y, int n) {", "  for (;;) {}", "}", ""]  # 1..5
        c_lines += ['  /* "cext/k.pyx":3', " *     for i in range(n):  # <<<", "*/", "  for (;;) {}"]  # 6..9
        c_lines += ['  /* "cext/k.pyx":1', " * def f(x):", "*/", "  copy();"]                       # 10..13
        c_lines += ["/* --- Runtime support code --- */", "  memcpy_loop();"]                     # 14, 15
        (src / "cext/k.c").write_text("\n".join(c_lines) + "\n")
        x86 = tmp_path / "x86.log"
        x86.write_text("cext/k.c:3:3: optimized: loop vectorized using 16 byte vectors\n"
                       "cext/k.c:9:5: optimized: loop vectorized using 16 byte vectors\n"
                       "cext/k.c:15:3: optimized: loop vectorized using 16 byte vectors\n"
                       "cext/k.c:12:3: optimized: basic block part vectorized using 16 byte vectors\n")
        arm = tmp_path / "arm.log"
        arm.write_text("  cext/k.c:9:5: optimized: loop vectorized using 8 byte vectors\n")
        r = run(TOOLS / "arm/vec_report.py", src, "--arch", "x86_64", x86, tmp_path,
                "--arch", "aarch64", arm, tmp_path)
        assert r.returncode == 0, r.stderr
        assert "| cext/k.pyx:3 | 16 | 8 | `for i in range(n):` |" in r.stdout
        assert "| ion_scale() [C] | 16 | no |" in r.stdout  # verbatim C: named by its function
        assert "| k | 2 | 1 |" in r.stdout            # the runtime-support loop is not counted
        assert "k: x86_64 1, aarch64 0" in r.stdout   # basic-block vectorisation, separately


class TestKernelOutputs:
    def test_compare(self, tmp_path):
        a = np.linspace(1.0, 2.0, 50)
        b = a.copy()
        b[3] = np.nextafter(b[3], 3.0)
        np.savez(tmp_path / "a.npz", v=a, p=np.arange(4))
        np.savez(tmp_path / "b.npz", v=a, p=np.arange(4))
        np.savez(tmp_path / "c.npz", v=b, p=np.arange(4))
        r = run(TOOLS / "arm/kernel_outputs.py", "compare", tmp_path / "a.npz", tmp_path / "b.npz")
        assert "all outputs bit-identical" in r.stdout
        r = run(TOOLS / "arm/kernel_outputs.py", "compare", tmp_path / "a.npz", tmp_path / "c.npz")
        assert "differs in 1 of 50 values, max 1 ulp" in r.stdout


@pytest.mark.parametrize("script", ["cross_build_arm.sh", "arm_test.sh", "arm/common.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(TOOLS / script)]).returncode == 0


def test_arm_test_help():
    r = subprocess.run(["bash", str(TOOLS / "arm_test.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "qemu" in r.stdout
