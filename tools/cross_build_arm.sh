#!/usr/bin/env bash
# Cross-build ionstream as an aarch64 (ARM64) wheel on an x86-64 Debian/Ubuntu host, Cython
# kernels included, with Debian's GNU toolchain (gcc-aarch64-linux-gnu) and crossenv.
#
#   tools/cross_build_arm.sh [-o DIR] [--wheelhouse]
#
# writes DIR/ionstream-<version>-cp311-cp311-linux_aarch64.whl (default DIR: dist/) for CPython
# 3.11 on 64-bit ARM Linux with glibc (Debian 12 / Raspberry Pi OS 12 arm64 and newer). Install it
# on the board with `pip install ionstream-*.whl`. --wheelhouse also downloads the aarch64 wheels
# of every dependency into DIR/wheelhouse-aarch64/ (with the wheel), for a board without internet:
# `pip install --no-index --find-links wheelhouse-aarch64 ionstream`. docs/arm.md explains the
# method; tools/arm_test.sh runs the kernel tests on the wheel under qemu-user.
#
# Installs what it needs: the cross compiler with apt-get (needs root, or have
# gcc-aarch64-linux-gnu and libc6-dev-arm64-cross installed), the target's Python headers from
# Debian's arm64 packages (no root: a private apt state under build/arm/apt), crossenv from PyPI.
# Downloads are cached under build/arm/ (ARM_CACHE); ARM_REFRESH=1 starts them afresh.
set -euo pipefail
# shellcheck source=arm/common.sh
source "$(dirname "$0")/arm/common.sh"

out=$ARM_REPO/dist wheelhouse=0
while [[ $# -gt 0 ]]; do
    case $1 in
        -o|--out) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        --wheelhouse) wheelhouse=1; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) arm_die "unknown argument $1 (see --help)" ;;
    esac
done

t0=$SECONDS
mkdir -p "$ARM_LOGS" "$out"
arm_install_host_tools aarch64-linux-gnu-gcc dpkg-deb || arm_die "cannot install the cross toolchain"
arm_log "toolchain: $(aarch64-linux-gnu-gcc --version | head -1)"
arm_make_sysroot
arm_make_crossenv
ARM_XENV=$ARM_CACHE/xenv
npinc=$(arm_numpy_include)
src=$(arm_stage)
kernels=$(cd "$src" && ls cext/*.pyx 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ')
arm_log "kernels: ${kernels:-none}"

# Cython's output is the same C for every platform. Cythonize with build-python, which sees
# numpy's .pxd (cross-python hides build-side packages from sys.path, where Cython looks for
# .pxd files); setup.py calls cythonize() when it is loaded, so `setup.py --name` does just that.
arm_log "cythonize (build side)"
(cd "$src" && "$ARM_XENV/bin/build-python" setup.py --name) >"$ARM_LOGS/cythonize.log" 2>&1 \
    || arm_die "cythonize failed (see $ARM_LOGS/cythonize.log)"

# Compile and link with the cross toolchain. CPPFLAGS is appended to the target's CFLAGS:
#   -I numpy headers of the aarch64 wheel, ahead of the build-side ones that setup.py adds;
#   -idirafter sysroot/usr/include: Debian's multiarch pyconfig.h includes
#     <aarch64-linux-gnu/python3.11/pyconfig.h>;
#   -fopt-info-vec-optimized: the vectoriser's report, kept in the log (tools/arm/vec_report.py).
# LDFLAGS: no DWARF in the shipped extensions (symbols are kept).
arm_log "cross-compile + wheel (aarch64-linux-gnu-gcc)"
rm -f "$out"/ionstream-*-linux_aarch64.whl
(cd "$src" && CPPFLAGS="-I$npinc -idirafter $ARM_SYSROOT/usr/include -fopt-info-vec-optimized" \
    LDFLAGS="-Wl,--strip-debug" \
    "$ARM_XENV/bin/cross-pip" wheel -v --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$out" .) >"$ARM_LOGS/cross-build.log" 2>&1 \
    || { grep -E 'error|Error' "$ARM_LOGS/cross-build.log" | tail -20 >&2
         arm_die "cross build failed (see $ARM_LOGS/cross-build.log)"; }
whl=$(ls -t "$out"/ionstream-*-linux_aarch64.whl | head -1)
"$ARM_CACHE/tools/bin/python" "$ARM_REPO/tools/arm/check_wheel.py" "$whl"
if [[ $wheelhouse == 1 ]]; then
    arm_log "wheelhouse: aarch64 wheels of the dependencies -> $out/wheelhouse-aarch64"
    "$ARM_CACHE/tools/bin/pip" download -q --disable-pip-version-check "${ARM_PIP_PLATFORMS[@]}" \
        "${ARM_PIP_TARGET[@]}" -d "$out/wheelhouse-aarch64" "$whl" >"$ARM_LOGS/wheelhouse.log" 2>&1 \
        || arm_die "pip download of the dependencies failed (see $ARM_LOGS/wheelhouse.log)"
    arm_log "wheelhouse: $(ls "$out/wheelhouse-aarch64" | wc -l) wheels, $(du -sh "$out/wheelhouse-aarch64" | cut -f1)"
fi
arm_log "done in $((SECONDS - t0)) s: $whl"
echo "$whl"
