#!/usr/bin/env python3
"""Side-by-side table of two `ionstream bench ... --json` outputs (last JSON line of each file).

    python tools/arm/bench_table.py NATIVE.log EMULATED.log

Prints Markdown: every numeric figure of the emulated run, the native one beside it, and their
ratio. The emulated column is qemu-user translating aarch64 code on the x86-64 host: it shows
that the code runs and how its parts compare, not how fast an ARM board is.
"""
import json
import sys


def last_json(path: str) -> dict:
    try:
        lines = [line for line in open(path).read().splitlines() if line.startswith("{")]
    except OSError:
        return {}
    return json.loads(lines[-1]) if lines else {}


def main(native_path: str, emulated_path: str) -> int:
    native, emulated = last_json(native_path), last_json(emulated_path)
    if not emulated:
        print(f"no JSON result in {emulated_path}")
        return 1
    print("| figure | x86-64, native | aarch64, EMULATED (qemu-user) | emulated / native |")
    print("|---|---|---|---|")
    for key, value in emulated.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        n = native.get(key)
        ratio = f"{value / n:.3g}" if isinstance(n, (int, float)) and n else ""
        print(f"| {key} | {n if n is not None else '-'} | {value} | {ratio} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
