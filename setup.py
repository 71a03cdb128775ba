"""Builds the Cython kernels in cext/ (every cext/*.pyx becomes cext.<name>).

Metadata lives in pyproject.toml; this file only declares the extensions so that
adding a kernel is adding a .pyx file.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable optimisation only: -O3 lets GCC vectorise on x86-64 and aarch64 alike;
# no -march=native, so a built wheel runs on any CPU of its architecture.
# -ffp-contract=off: no fused multiply-add (GCC fuses a*b+c by default on aarch64), so the
# kernels give the same bits on an ARM board as on x86-64 (tools/arm/kernel_outputs.py).
COMPILE_ARGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]

# Every kernel cimports cext/_dspcore.pxd, which includes cext/_simd.h: a change to either rebuilds all.
DEPENDS = [os.path.join("cext", "_dspcore.pxd"), os.path.join("cext", "_simd.h")]

extensions = [
    Extension(
        "cext." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[np.get_include(), "cext"],
        depends=DEPENDS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )
    for path in sorted(glob.glob(os.path.join("cext", "*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"embedsignature": True},
    ),
)
