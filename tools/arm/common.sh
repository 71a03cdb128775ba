# Shared by tools/cross_build_arm.sh and tools/arm_test.sh (source it; do not run it).
#
# Everything downloaded or generated lives under $ARM_CACHE (default build/arm/, ignored by git):
#   apt/       a private apt configuration and cache for Debian arm64 (the host's dpkg is untouched)
#   sysroot/   Debian arm64 packages unpacked with dpkg -x: the target CPython 3.11 (headers,
#              sysconfigdata, interpreter for qemu-user) and the C/C++ runtime
#   tools/     x86-64 venv holding crossenv
#   xenv/      the crossenv environment (cross-python reports itself as linux-aarch64)
#   numpy-include-<ver>/   numpy's C headers taken from numpy's aarch64 wheel
#   src/       a copy of the checkout (tracked + untracked, not ignored) that is built
#   logs/      build logs (the aarch64 compiler's -fopt-info-vec output is in cross-build.log)

set -euo pipefail

ARM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ARM_CACHE=${ARM_CACHE:-$ARM_REPO/build/arm}
ARM_SYSROOT=$ARM_CACHE/sysroot
ARM_LOGS=$ARM_CACHE/logs
# The target: Debian 12 "bookworm" arm64 (also Raspberry Pi OS 12), whose python3 is CPython 3.11,
# the same minor version as the project's Python. crossenv needs build and target to be the same
# X.Y. Another suite is possible (ARM_DEBIAN_SUITE=trixie ARM_PYVER=3.13 with a 3.13 build Python),
# but only bookworm/3.11 is tested.
ARM_DEBIAN_SUITE=${ARM_DEBIAN_SUITE:-bookworm}
ARM_PYVER=${ARM_PYVER:-3.11}
ARM_TRIPLET=aarch64-linux-gnu
ARM_CROSSENV_VERSION=${ARM_CROSSENV_VERSION:-1.6.2}
# pip platform tags the target accepts (glibc 2.36 on bookworm) for pip download/install --platform
ARM_PIP_PLATFORMS=(--platform linux_aarch64 --platform manylinux2014_aarch64
                   --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64)
ARM_PIP_TARGET=(--python-version "$ARM_PYVER" --implementation cp --abi "cp${ARM_PYVER/./}"
                --only-binary=:all:)
# Debian packages (arm64) that make up the sysroot. Dependencies are resolved by apt.
ARM_DEBS=("python$ARM_PYVER" libstdc++6)
# Unpacked without their dependencies: libpython-dev depends on libc6-dev, whose libc.so linker
# script names absolute paths that would win over the cross toolchain's own libc.
ARM_DEBS_NODEPS=("libpython$ARM_PYVER-dev")

# Packages the x86-64 host needs, by command.
declare -A ARM_HOST_PKGS=(
    [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
    [aarch64-linux-gnu-objdump]=binutils-aarch64-linux-gnu
    [qemu-aarch64-static]=qemu-user-static
    [dpkg-deb]=dpkg
)

arm_log() { printf '[arm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
arm_die() { printf '[arm] error: %s\n' "$*" >&2; exit 1; }

# arm_have_host_tools CMD... : true if every CMD is on PATH (and the cross libc headers exist
# when the compiler is asked for).
arm_have_host_tools() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || return 1
        if [[ $c == aarch64-linux-gnu-gcc && ! -e /usr/$ARM_TRIPLET/include/stdio.h ]]; then
            return 1
        fi
    done
}

# arm_install_host_tools CMD... : installs the Debian packages that provide CMD (root only).
# Returns 1, with the reason on stderr, when they are missing and cannot be installed.
arm_install_host_tools() {
    arm_have_host_tools "$@" && return 0
    local pkgs=() c
    for c in "$@"; do pkgs+=("${ARM_HOST_PKGS[$c]}"); done
    # the cross compiler only Recommends the target libc headers; we need them
    [[ " ${pkgs[*]} " == *" gcc-aarch64-linux-gnu "* ]] && pkgs+=(libc6-dev-arm64-cross)
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "needs ${pkgs[*]} (Debian/Ubuntu packages) and this host has no apt-get" >&2; return 1
    fi
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n)
        else echo "needs ${pkgs[*]}: run as root, or apt-get install them first" >&2; return 1; fi
    fi
    arm_log "apt-get install ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >/dev/null \
        && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
            "${pkgs[@]}" >"$ARM_LOGS/apt-host.log" 2>&1 \
        || { echo "apt-get install ${pkgs[*]} failed (see $ARM_LOGS/apt-host.log)" >&2; return 1; }
    arm_have_host_tools "$@" || { echo "installed ${pkgs[*]} but $* still missing" >&2; return 1; }
}

# arm_build_python: prints the x86-64 CPython $ARM_PYVER used for the build ($ARM_BUILD_PYTHON,
# else the base interpreter of the repo's .venv, else pythonX.Y on PATH).
arm_build_python() {
    local cands=() p
    [[ -n ${ARM_BUILD_PYTHON:-} ]] && cands+=("$ARM_BUILD_PYTHON")
    if [[ -x $ARM_REPO/.venv/bin/python ]]; then
        cands+=("$("$ARM_REPO/.venv/bin/python" -c 'import sys; print(sys._base_executable)')")
    fi
    cands+=("$(command -v "python$ARM_PYVER" || true)" "$(command -v python3 || true)")
    for p in "${cands[@]}"; do
        [[ -n $p && -x $p ]] || continue
        if [[ $("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])') == "$ARM_PYVER" ]]; then
            echo "$p"; return 0
        fi
    done
    arm_die "no CPython $ARM_PYVER for the build (crossenv needs the target's X.Y); set ARM_BUILD_PYTHON"
}

# arm_apt ARGS...: apt-get/apt-cache against a private arm64 configuration under $ARM_CACHE/apt.
_arm_apt_opts() {
    local d=$ARM_CACHE/apt
    echo "-o Dir::Etc=$d/etc -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=$d/etc/sources.list.d"
    # the host's apt.conf.d is kept (proxies); the -o options below win over it
    echo "-o Dir::Etc::preferencesparts=$d/etc/preferences.d -o Dir::Etc::parts=/etc/apt/apt.conf.d"
    echo "-o Dir::State=$d/state -o Dir::State::status=$d/state/status -o Dir::Cache=$d/cache"
    echo "-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Debug::NoLocking=1"
    echo "-o APT::Sandbox::User=$(id -un) -o Acquire::Retries=3"
}
arm_apt() { local cmd=$1; shift; # shellcheck disable=SC2046
    "$cmd" $(_arm_apt_opts) "$@"; }

# arm_make_sysroot: Debian arm64 python$ARM_PYVER (+ its libraries, headers, sysconfigdata) and
# libstdc++ unpacked into $ARM_SYSROOT. Cached: rebuilt when the package list changes or with
# ARM_REFRESH=1. Needs no root: a private apt state downloads, dpkg -x unpacks, nothing is installed.
arm_make_sysroot() {
    local stamp="$ARM_SYSROOT/.ionstream-sysroot" want
    want="suite=$ARM_DEBIAN_SUITE debs=${ARM_DEBS[*]} nodeps=${ARM_DEBS_NODEPS[*]}"
    if [[ ${ARM_REFRESH:-0} != 1 && -f $stamp && $(head -1 "$stamp") == "$want" ]]; then
        arm_log "sysroot: cached ($ARM_SYSROOT)"; return 0
    fi
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || arm_die "the arm64 sysroot is made with apt-get and dpkg-deb (Debian/Ubuntu host)"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r $keyring ]] || arm_die "missing $keyring (apt-get install debian-archive-keyring)"
    local d=$ARM_CACHE/apt
    rm -rf "$d"
    mkdir -p "$d"/etc/{sources.list.d,preferences.d} "$d"/state/lists/partial \
             "$d"/cache/archives/partial
    : >"$d/state/status"
    cat >"$d/etc/sources.list.d/debian-arm64.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $ARM_DEBIAN_SUITE $ARM_DEBIAN_SUITE-updates
Components: main
Architectures: arm64
Signed-By: $keyring

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $ARM_DEBIAN_SUITE-security
Components: main
Architectures: arm64
Signed-By: $keyring
EOF
    arm_log "sysroot: apt-get update (Debian $ARM_DEBIAN_SUITE arm64, private state in $d)"
    arm_apt apt-get update -q >"$ARM_LOGS/apt-arm64.log" 2>&1 \
        || arm_die "apt-get update for arm64 failed (see $ARM_LOGS/apt-arm64.log)"
    arm_log "sysroot: download ${ARM_DEBS[*]} (+ dependencies), ${ARM_DEBS_NODEPS[*]}"
    arm_apt apt-get install -y -q -d --no-install-recommends "${ARM_DEBS[@]}" \
        >>"$ARM_LOGS/apt-arm64.log" 2>&1 || arm_die "apt-get download failed (see $ARM_LOGS/apt-arm64.log)"
    (cd "$d/cache/archives" && arm_apt apt-get download -q "${ARM_DEBS_NODEPS[@]}") \
        >>"$ARM_LOGS/apt-arm64.log" 2>&1 || arm_die "apt-get download failed (see $ARM_LOGS/apt-arm64.log)"
    rm -rf "$ARM_SYSROOT"; mkdir -p "$ARM_SYSROOT"
    local deb
    for deb in "$d"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$ARM_SYSROOT"; done
    [[ -x $ARM_SYSROOT/usr/bin/python$ARM_PYVER ]] || arm_die "sysroot has no usr/bin/python$ARM_PYVER"
    { echo "$want"; (cd "$d/cache/archives" && ls -- *.deb); } >"$stamp"
    arm_log "sysroot: $(($(wc -l <"$stamp") - 1)) packages unpacked, $(du -sh "$ARM_SYSROOT" | cut -f1)"
}

# arm_make_crossenv: crossenv (from PyPI) between the x86-64 build Python and the sysroot's
# arm64 python; prints nothing, sets ARM_XENV. Build-side packages come from pyproject's
# [build-system].requires.
arm_make_crossenv() {
    ARM_XENV=$ARM_CACHE/xenv
    local bp stamp want reqs
    bp=$(arm_build_python)
    mapfile -t reqs < <("$bp" -c 'import tomllib, sys
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$ARM_REPO/pyproject.toml")
    stamp=$ARM_XENV/.ionstream-xenv
    want="crossenv=$ARM_CROSSENV_VERSION build=$bp requires=${reqs[*]} \
sysroot=$(sha256sum "$ARM_SYSROOT/.ionstream-sysroot" | cut -c1-16)"
    if [[ ${ARM_REFRESH:-0} != 1 && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        arm_log "crossenv: cached ($ARM_XENV)"; return 0
    fi
    arm_log "crossenv: $ARM_CROSSENV_VERSION on $bp -> $ARM_XENV"
    rm -rf "$ARM_CACHE/tools" "$ARM_XENV"
    "$bp" -m venv "$ARM_CACHE/tools"
    "$ARM_CACHE/tools/bin/pip" install -q --disable-pip-version-check "crossenv==$ARM_CROSSENV_VERSION" \
        >"$ARM_LOGS/crossenv.log" 2>&1 || arm_die "pip install crossenv failed (see $ARM_LOGS/crossenv.log)"
    # --sysroot: headers and libraries of the target come from the Debian packages. The compiler
    # (aarch64-linux-gnu-gcc), flags and extension suffix come from the target's sysconfigdata.
    "$ARM_CACHE/tools/bin/python" -m crossenv --sysroot "$ARM_SYSROOT" \
        "$ARM_SYSROOT/usr/bin/python$ARM_PYVER" "$ARM_XENV" >>"$ARM_LOGS/crossenv.log" 2>&1 \
        || arm_die "crossenv failed (see $ARM_LOGS/crossenv.log)"
    # build side (runs on x86-64): Cython, numpy (for numpy's .pxd), setuptools, wheel
    "$ARM_XENV/bin/build-pip" install -q --disable-pip-version-check "${reqs[@]}" \
        >>"$ARM_LOGS/crossenv.log" 2>&1 || arm_die "build-pip install failed (see $ARM_LOGS/crossenv.log)"
    # cross side: pure-Python setuptools/wheel (crossenv seeds an old setuptools); compiled
    # build requirements are only "exposed" (metadata), so pip sees them as installed
    "$ARM_XENV/bin/cross-pip" install -q --disable-pip-version-check -U \
        $(printf '%s\n' "${reqs[@]}" | grep -iE '^(setuptools|wheel)\b') \
        >>"$ARM_LOGS/crossenv.log" 2>&1 || arm_die "cross-pip install failed (see $ARM_LOGS/crossenv.log)"
    "$ARM_XENV/bin/cross-expose" Cython numpy >>"$ARM_LOGS/crossenv.log" 2>&1
    echo "$want" >"$stamp"
}

# arm_numpy_include: numpy's C headers from numpy's aarch64 wheel, of the same version as the
# build-side numpy whose .pxd Cython used. Prints the include directory.
arm_numpy_include() {
    local ver rel dest whl
    read -r ver rel < <("$ARM_XENV/bin/build-python" -c 'import numpy, os
print(numpy.__version__, os.path.relpath(numpy.get_include(), os.path.dirname(os.path.dirname(numpy.__file__))))')
    dest=$ARM_CACHE/numpy-include-$ver
    if [[ ! -f $dest/numpy/arrayobject.h ]]; then
        mkdir -p "$ARM_CACHE/wheels"
        "$ARM_CACHE/tools/bin/pip" download -q --disable-pip-version-check --no-deps \
            "${ARM_PIP_PLATFORMS[@]}" "${ARM_PIP_TARGET[@]}" -d "$ARM_CACHE/wheels" "numpy==$ver" \
            >>"$ARM_LOGS/crossenv.log" 2>&1 || arm_die "pip download numpy==$ver (aarch64) failed"
        whl=$(ls "$ARM_CACHE"/wheels/numpy-"$ver"-*aarch64*.whl | head -1)
        rm -rf "$dest.tmp"
        "$ARM_CACHE/tools/bin/python" - "$whl" "$rel" "$dest.tmp" <<'EOF'
import sys, zipfile, os
whl, rel, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(rel + "/") and not n.endswith("/"):
            out = os.path.join(dest, n[len(rel) + 1:])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(n))
EOF
        rm -rf "$dest"; mv "$dest.tmp" "$dest"
    fi
    echo "$dest"
}

# arm_stage: copies the checkout (tracked and untracked files that git does not ignore, so
# kernels not yet committed are built too, and no x86-64 build output is) to $ARM_CACHE/src.
arm_stage() {
    local src=$ARM_CACHE/src
    rm -rf "$src"; mkdir -p "$src"
    git -C "$ARM_REPO" rev-parse --git-dir >/dev/null 2>&1 || arm_die "$ARM_REPO is not a git checkout"
    (cd "$ARM_REPO" && git ls-files -co --exclude-standard -z \
        | while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$src"
    echo "$src"
}

# arm_emulation_shims: files qemu-user serves from the sysroot (-L remaps guest paths that exist
# there). QEMU 7.2 (Debian 12) passes the host's x86 /proc/cpuinfo through to the guest; the
# cpuinfo library inside onnxruntime's aarch64 wheel finds no ARM cores in it and crashes
# (SIGSEGV on import). An ARM /proc/cpuinfo (Cortex-A72 cores, as on a Raspberry Pi 4, one per
# host CPU) is what a board would show.
arm_emulation_shims() {
    mkdir -p "$ARM_SYSROOT/proc"
    local i n
    n=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
        printf 'CPU revision\t: 3\n\n'
    done >"$ARM_SYSROOT/proc/cpuinfo"
}

# "${ARM_PYTHON[@]}" ARGS...: the sysroot's arm64 python under qemu-user. qemu-aarch64-static is
# called explicitly (containers have no binfmt_misc); -L makes the sysroot the root for the
# dynamic loader and libraries.
ARM_PYTHON=(qemu-aarch64-static -L "$ARM_SYSROOT" "$ARM_SYSROOT/usr/bin/python$ARM_PYVER")
