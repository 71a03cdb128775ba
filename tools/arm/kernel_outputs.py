#!/usr/bin/env python3
"""Do the kernels give the same bits on two architectures for the same input?

    python tools/arm/kernel_outputs.py inputs IN.npz             # on one machine: inputs + weights
    python tools/arm/kernel_outputs.py run IN.npz OUT.npz        # on each architecture
    python tools/arm/kernel_outputs.py compare A.npz B.npz       # identical, or how far apart

Inputs are made once and carried over, as are the smoothing weights: NumPy's and LAPACK's own
results (np.sin, np.random's tails, the least-squares fit behind Savitzky-Golay weights) differ
in the last bits between x86-64 and aarch64 builds of those libraries, which says nothing about
our kernels. ``run`` feeds the same bits to every public DSP entry point that calls a kernel.
Entry points that do not exist in this checkout are left out.
"""
from __future__ import annotations

import platform
import sys

import numpy as np


def make_inputs(path: str) -> None:
    rng = np.random.default_rng(20240601)
    n = 20000
    i = np.arange(n)
    x = 1000 + 50 * np.sin(i / 300) + rng.normal(size=n) * 10
    for c in rng.integers(100, n - 100, 40):
        x[c - 20:c + 20] += rng.uniform(200, 5000) * np.exp(-0.5 * ((np.arange(40) - 20) / 4.0) ** 2)
    arrays = {"x64": x, "x32": x.astype(np.float32)}
    from dsp.smoothing import gaussian_weights, savgol_weights

    for name, sm in (("sg", savgol_weights(11, 4)), ("sgm", savgol_weights(9, 2, "mirror")),
                     ("g", gaussian_weights(3.0))):
        arrays[f"{name}_half"] = sm.half
        arrays[f"{name}_mode"] = np.array(sm.mode)
        if sm.left is not None:
            arrays[f"{name}_left"], arrays[f"{name}_right"] = sm.left, sm.right
    np.savez(path, **arrays)


def run(inp: str, out: str) -> None:
    d = np.load(inp)
    res: dict[str, np.ndarray] = {}
    try:
        from dsp.smoothing import Smoother, apply

        for name in ("sg", "sgm", "g"):
            sm = Smoother(d[f"{name}_half"], int(d[f"{name}_mode"]),
                          d[f"{name}_left"] if f"{name}_left" in d else None,
                          d[f"{name}_right"] if f"{name}_right" in d else None)
            for t in ("x64", "x32"):
                res[f"smooth_{name}_{t}"] = apply(sm, d[t])
    except ImportError:
        pass
    try:
        from dsp.baseline import estimate_baseline

        b = estimate_baseline(d["x32"])
        res["baseline"], res["noise"] = b.baseline, b.noise
    except ImportError:
        pass
    try:
        from dsp.peaks import find_peaks

        for t in ("x64", "x32"):
            p, props = find_peaks(d[t], prominence=50, width=1, rel_height=0.5, distance=3)
            res[f"peaks_{t}"] = p
            for k, v in sorted(props.items()):
                res[f"peaks_{t}_{k}"] = np.asarray(v)
    except ImportError:
        pass
    np.savez(out, **res)
    print(f"{platform.machine()}: {len(res)} outputs")


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    differ = 0
    for k in sorted(set(a.files) | set(b.files)):
        if k not in a.files or k not in b.files:
            print(f"  {k:34s} only in one run")
            continue
        x, y = a[k], b[k]
        if x.shape == y.shape and x.tobytes() == y.tobytes():
            print(f"  {k:34s} identical ({x.size} values)")
            continue
        differ += 1
        if x.shape != y.shape or x.dtype.kind != "f":
            print(f"  {k:34s} DIFFERS (shape {x.shape} vs {y.shape})")
            continue
        ulp = np.abs(x - y) / np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(x.dtype))
        print(f"  {k:34s} differs in {np.count_nonzero(x != y)} of {x.size} values, "
              f"max {np.nanmax(ulp):.0f} ulp")
    return differ


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["-h"]
    if cmd == "inputs" and len(args) == 1:
        make_inputs(args[0])
    elif cmd == "run" and len(args) == 2:
        run(*args)
    elif cmd == "compare" and len(args) == 2:
        n = compare(*args)
        print(f"  {n} output(s) differ" if n else "  all outputs bit-identical")
    else:
        print(__doc__)
        sys.exit(2)
