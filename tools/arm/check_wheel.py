#!/usr/bin/env python3
"""Check a cross-built wheel: one aarch64 extension per cext/*.pyx, and what each needs at run time.

    python tools/arm/check_wheel.py dist/ionstream-0.1.0-cp311-cp311-linux_aarch64.whl

Exits 1 when a kernel is missing or an extension is not an AArch64 ELF shared object. Prints, per
extension: size, shared libraries it needs (DT_NEEDED) and the newest glibc symbol version it
uses (the oldest glibc a board may have).
"""
from __future__ import annotations

import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

EM_AARCH64 = 183


def elf_machine(data: bytes) -> int | None:
    if data[:4] != b"\x7fELF" or data[5] != 1:  # little-endian only
        return None
    return struct.unpack_from("<H", data, 18)[0]


def readelf(path: Path, *flags: str) -> str:
    try:
        return subprocess.run(["aarch64-linux-gnu-readelf", *flags, str(path)], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    whl = Path(argv[1])
    errors = []
    with zipfile.ZipFile(whl) as z, tempfile.TemporaryDirectory() as tmp:
        names = z.namelist()
        kernels = sorted(Path(n).stem for n in names if re.fullmatch(r"cext/[^/]+\.pyx", n))
        exts = {n.split("/")[1].split(".")[0]: n for n in names
                if re.fullmatch(r"cext/[^/]+\.cpython-[^/]+\.so", n)}
        if not kernels:
            errors.append("no cext/*.pyx in the wheel")
        for k in kernels:
            if k not in exts:
                errors.append(f"cext/{k}.pyx has no compiled extension in the wheel")
        for k, n in sorted(exts.items()):
            data = z.read(n)
            if not n.endswith("-aarch64-linux-gnu.so") or elf_machine(data) != EM_AARCH64:
                errors.append(f"{n} is not an aarch64 extension (e_machine={elf_machine(data)})")
                continue
            p = Path(tmp) / Path(n).name
            p.write_bytes(data)
            needed = re.findall(r"\(NEEDED\).*\[(.+?)\]", readelf(p, "-d"))
            glibc = sorted(set(re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", readelf(p, "-V"))),
                           key=lambda v: tuple(map(int, v.split("."))))
            print(f"  {n}: {len(data) / 1024:.0f} KiB, AArch64, needs {', '.join(needed) or '-'}"
                  f", glibc >= {glibc[-1] if glibc else '?'}")
    for e in errors:
        print(f"  ERROR: {e}", file=sys.stderr)
    if not errors:
        print(f"  {whl.name}: {len(kernels)} kernel(s), all compiled for aarch64")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
