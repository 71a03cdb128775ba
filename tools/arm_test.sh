#!/usr/bin/env bash
# Prove the cross-built aarch64 wheel on an emulated ARM64 CPU (qemu-user), from x86-64:
#
#   tools/arm_test.sh [--wheel FILE] [--bench] [--no-frames] [--no-smoke] [--no-vec] [--no-identity]
#                     [-- PYTEST_ARGS]
#
# 1. builds the wheel (tools/cross_build_arm.sh), unless --wheel is given;
# 2. installs it with its dependencies' aarch64 wheels from PyPI (pip --platform) into a folder;
# 3. runs, with Debian's arm64 python3.11 under qemu-aarch64-static, the kernels' equality tests
#    against SciPy (tests/dsp_tests/test_dsp*.py), the feature-vector kernel against its NumPy reference
#    (tests/dsp_tests/test_dsp_features.py) and the frame codec tests (tests/instrument_tests/test_frames*.py);
# 4. a smoke run of the daemon: `ionstream run --source sim:// --duration 5s`;
# 5. the vectorisation report (tools/arm/vec_report.py): which kernel loops GCC vectorised on
#    x86-64 (native build of the same sources) and on aarch64 (the wheel's build); and whether
#    the kernels give the same bits on both for the same input (tools/arm/kernel_outputs.py);
# 6. --bench: `ionstream bench dsp` emulated and on this host (the emulated figure is NOT the
#    speed of an ARM board: qemu translates every instruction).
#
# Exit status: 0 all passed; 1 a step failed; 0 with a line starting "SKIP:" when qemu or the
# cross toolchain is missing and cannot be installed (not root, no apt-get), so an optional CI
# step does not fail on such a host (ARM_TEST_REQUIRE=1 makes a skip exit 1).
# Everything is cached under build/arm/ (see tools/arm/common.sh); logs in build/arm/logs/.
set -euo pipefail
# shellcheck source=arm/common.sh
source "$(dirname "$0")/arm/common.sh"

wheel="" bench=0 frames=1 smoke=1 vec=1 ident=1 pytest_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --wheel) wheel=$(realpath "$2"); shift 2 ;;
        --bench) bench=1; shift ;;
        --no-frames) frames=0; shift ;;
        --no-smoke) smoke=0; shift ;;
        --no-vec) vec=0; shift ;;
        --no-identity) ident=0; shift ;;
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) arm_die "unknown argument $1 (see --help)" ;;
    esac
done

mkdir -p "$ARM_LOGS"
t_start=$SECONDS
declare -a summary=()
step() { summary+=("$(printf '%-34s %s' "$1" "$2")"); arm_log "$1: $2"; }
failed=0

if ! reason=$(arm_install_host_tools aarch64-linux-gnu-gcc aarch64-linux-gnu-objdump qemu-aarch64-static \
        dpkg-deb 2>&1); then
    echo "SKIP: emulated ARM64 test not run: $reason"
    [[ ${ARM_TEST_REQUIRE:-0} == 1 ]] && exit 1
    exit 0
fi

# 1. the wheel
if [[ -z $wheel ]]; then
    t=$SECONDS
    wheel=$("$ARM_REPO/tools/cross_build_arm.sh" -o "$ARM_CACHE/dist" | tail -1)
    step "cross build (aarch64 wheel)" "$((SECONDS - t)) s: $(basename "$wheel")"
else
    arm_make_sysroot
    arm_make_crossenv
fi
[[ -f $wheel ]] || arm_die "no wheel"

# 2. the target's site-packages: the wheel + its dependencies' aarch64 wheels + test tools
t=$SECONDS
site=$ARM_CACHE/target
rm -rf "$site"
mapfile -t testreqs < <("$ARM_CACHE/tools/bin/python" - "$ARM_REPO/pyproject.toml" <<'EOF'
import re, sys, tomllib
extra = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["test"]
print("\n".join(r for r in extra
                if re.match(r"(pytest|pytest-timeout|hypothesis)\b", r, re.I) and "[" not in r))
EOF
)
"$ARM_CACHE/tools/bin/pip" install -q --disable-pip-version-check --target "$site" \
    "${ARM_PIP_PLATFORMS[@]}" "${ARM_PIP_TARGET[@]}" "$wheel" "${testreqs[@]}" \
    >"$ARM_LOGS/target-install.log" 2>&1 \
    || { tail -5 "$ARM_LOGS/target-install.log" >&2; arm_die "pip install --platform aarch64 failed"; }
step "install wheel + deps (aarch64)" "$((SECONDS - t)) s, $(du -sh "$site" | cut -f1) in $site"

# 3. the kernel equality tests, in a folder that holds the tests and docs but no package sources
arm_emulation_shims
run=$ARM_CACHE/run
rm -rf "$run"; mkdir -p "$run"
cp -r "$ARM_REPO/tests" "$ARM_REPO/pyproject.toml" "$run/"
[[ -d $ARM_REPO/docs ]] && cp -r "$ARM_REPO/docs" "$run/"
cp "$ARM_REPO/tools/arm/conftest_emulated.py" "$run/conftest.py"
find "$run" -name __pycache__ -prune -exec rm -rf {} +
files=()
# tests/dsp_tests/test_dsp*.py includes the feature-vector kernel (cext/features.pyx) against its NumPy reference
for f in "$run"/tests/dsp_tests/test_dsp*.py; do [[ -f $f ]] && files+=("tests/dsp_tests/$(basename "$f")"); done
if [[ $frames == 1 ]]; then
    for f in "$run"/tests/instrument_tests/test_frames*.py; do [[ -f $f ]] && files+=("tests/instrument_tests/$(basename "$f")"); done
fi
if [[ ${#files[@]} == 0 ]]; then
    step "emulated tests" "FAIL: no tests/dsp_tests/test_dsp*.py to run"; failed=1
else
    t=$SECONDS
    arm_log "emulated pytest: ${files[*]}"
    set +e
    (cd "$run" && IONSTREAM_ARM_SITE=$site PYTHONPATH=$site PYTHONDONTWRITEBYTECODE=1 \
        "${ARM_PYTHON[@]}" -m pytest -p no:cacheprovider -q -m "not gpu and not slow" -o timeout=3600 \
        "${files[@]}" "${pytest_args[@]}") 2>&1 | tee "$ARM_LOGS/emulated-tests.log"
    rc=${PIPESTATUS[0]}
    set -e
    result=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$ARM_LOGS/emulated-tests.log" \
             | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
    if [[ $rc == 0 ]]; then step "emulated tests ($(( ${#files[@]} )) files)" "$((SECONDS - t)) s: $result"
    else step "emulated tests" "FAIL (rc=$rc) after $((SECONDS - t)) s: $result"; failed=1; fi
fi

# 4. smoke run of the daemon
if [[ $smoke == 1 ]]; then
    t=$SECONDS
    set +e
    (cd "$run" && PYTHONPATH=$site timeout 900 "${ARM_PYTHON[@]}" -m ionstream.cli run --source sim:// \
        --duration 5s --no-status-line) >"$ARM_LOGS/emulated-smoke.log" 2>&1
    rc=$?
    set -e
    if [[ $rc == 0 ]]; then step "emulated smoke (run sim:// 5s)" "$((SECONDS - t)) s wall: ok"
    else
        # the same command on this host tells an ARM problem from a daemon that does not run at all
        native=${ARM_NATIVE_IONSTREAM:-$ARM_REPO/.venv/bin/ionstream} where=""
        if [[ -x $native ]]; then
            if (cd "$run" && timeout 120 "$native" run --source sim:// --duration 5s --no-status-line) \
                    >"$ARM_LOGS/native-smoke.log" 2>&1; then where=", passes on $(uname -m)"
            else where=", fails on $(uname -m) too (not an ARM problem; $ARM_LOGS/native-smoke.log)"; fi
        fi
        step "emulated smoke (run sim:// 5s)" "FAIL (rc=$rc) after $((SECONDS - t)) s$where"
        failed=1
    fi
    tail -3 "$ARM_LOGS/emulated-smoke.log" | sed 's/^/    /' >&2
fi

# 5. a native x86-64 build of the same (cythonized) sources, with the vectoriser's report, for
#    5a. the vectorisation report: which loops GCC vectorised on each architecture;
#    5b. cross-architecture identity: the kernels' outputs for the same input bits, x86-64 vs
#        emulated aarch64 (informational; ARM_TEST_IDENTICAL=1 makes a difference a failure).
x86_ok=0
if [[ ($vec == 1 || $ident == 1 || $bench == 1) && -d $ARM_CACHE/src/cext ]]; then
    rm -rf "$ARM_CACHE/x86"
    if (cd "$ARM_CACHE/src" && CPPFLAGS=-fopt-info-vec-optimized "$ARM_CACHE/xenv/bin/build-python" \
            setup.py build_ext -b "$ARM_CACHE/x86/lib" -t "$ARM_CACHE/x86/tmp") \
            >"$ARM_LOGS/x86-build.log" 2>&1; then
        x86_ok=1
        for d in "$ARM_CACHE"/src/*/; do   # the Python packages beside the x86-64 extensions
            [[ -f $d/__init__.py ]] && cp -rn "$d" "$ARM_CACHE/x86/lib/"
        done
    else
        step "x86-64 build (for 5a/5b)" "FAIL, see $ARM_LOGS/x86-build.log"
    fi
fi
if [[ $vec == 1 && $x86_ok == 1 && -f $ARM_LOGS/cross-build.log ]]; then
    "$ARM_CACHE/tools/bin/python" "$ARM_REPO/tools/arm/vec_report.py" "$ARM_CACHE/src" \
        --arch x86_64 "$ARM_LOGS/x86-build.log" "$ARM_CACHE/x86/lib" \
        --arch aarch64 "$ARM_LOGS/cross-build.log" "$ARM_CACHE/src/build/lib.linux-aarch64-cpython-311" \
        >"$ARM_CACHE/vec-report.md"
    echo "== vectorisation (GCC -fopt-info-vec-optimized, objdump) =="
    cat "$ARM_CACHE/vec-report.md"
    step "vectorisation report" "$ARM_CACHE/vec-report.md"
fi
native_py=${ARM_NATIVE_PYTHON:-$ARM_REPO/.venv/bin/python}
if [[ $ident == 1 && $x86_ok == 1 ]]; then
    if [[ ! -x $native_py ]]; then
        step "x86-64 vs aarch64 kernel outputs" "not run: no x86-64 Python with numpy/scipy (ARM_NATIVE_PYTHON)"
    else
        ko=$ARM_REPO/tools/arm/kernel_outputs.py
        PYTHONPATH=$ARM_CACHE/x86/lib "$native_py" "$ko" inputs "$ARM_CACHE/ko-inputs.npz"
        PYTHONPATH=$ARM_CACHE/x86/lib "$native_py" "$ko" run "$ARM_CACHE/ko-inputs.npz" "$ARM_CACHE/ko-x86_64.npz"
        (cd "$run" && PYTHONPATH=$site "${ARM_PYTHON[@]}" "$ko" run "$ARM_CACHE/ko-inputs.npz" \
            "$ARM_CACHE/ko-aarch64.npz")
        echo "== kernel outputs, same input bits: x86-64 native vs aarch64 emulated =="
        "$native_py" "$ko" compare "$ARM_CACHE/ko-x86_64.npz" "$ARM_CACHE/ko-aarch64.npz" \
            | tee "$ARM_LOGS/kernel-outputs.log"
        verdict=$(tail -1 "$ARM_LOGS/kernel-outputs.log" | sed 's/^ *//')
        step "x86-64 vs aarch64 kernel outputs" "$verdict"
        if [[ $verdict != "all outputs bit-identical" && ${ARM_TEST_IDENTICAL:-0} == 1 ]]; then failed=1; fi
    fi
fi

# 6. DSP benchmark: emulated aarch64 beside this host (the x86-64 build of the same sources when
#    step 5 made one, else the repo's .venv)
if [[ $bench == 1 ]]; then
    if ! (cd "$run" && PYTHONPATH=$site "${ARM_PYTHON[@]}" -m ionstream.cli bench dsp --help) >/dev/null 2>&1; then
        step "bench dsp" "not run: no \`ionstream bench dsp\` in this checkout"
    else
        read -r -a bargs <<<"${ARM_BENCH_ARGS:-}"
        t=$SECONDS
        (cd "$run" && PYTHONPATH=$site "${ARM_PYTHON[@]}" -m ionstream.cli bench dsp --json "${bargs[@]}") \
            >"$ARM_LOGS/bench-dsp-aarch64-emulated.log" 2>&1 || failed=1
        step "bench dsp, aarch64 EMULATED" "$((SECONDS - t)) s, $ARM_LOGS/bench-dsp-aarch64-emulated.log"
        native=()
        if [[ $x86_ok == 1 && -x $native_py ]]; then
            native=(env PYTHONPATH="$ARM_CACHE/x86/lib" "$native_py" -m ionstream.cli)
        elif [[ -x ${ARM_NATIVE_IONSTREAM:-$ARM_REPO/.venv/bin/ionstream} ]]; then
            native=("${ARM_NATIVE_IONSTREAM:-$ARM_REPO/.venv/bin/ionstream}")
        fi
        if [[ ${#native[@]} -gt 0 ]]; then
            t=$SECONDS
            (cd "$run" && "${native[@]}" bench dsp --json "${bargs[@]}") >"$ARM_LOGS/bench-dsp-x86_64.log" 2>&1 \
                || failed=1
            step "bench dsp, x86-64 native" "$((SECONDS - t)) s, $ARM_LOGS/bench-dsp-x86_64.log"
        fi
        echo "== ionstream bench dsp: x86-64 native vs aarch64 EMULATED by qemu-user on this host (not board speed) =="
        "$ARM_CACHE/tools/bin/python" "$ARM_REPO/tools/arm/bench_table.py" "$ARM_LOGS/bench-dsp-x86_64.log" \
            "$ARM_LOGS/bench-dsp-aarch64-emulated.log" | tee "$ARM_CACHE/bench-dsp.md"
    fi
fi

echo
echo "== tools/arm_test.sh summary ($(( SECONDS - t_start )) s) =="
printf '  %s\n' "${summary[@]}"
if [[ $failed == 0 ]]; then echo "PASS"; else echo "FAIL"; fi
exit $failed
