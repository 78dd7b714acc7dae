#!/usr/bin/env bash
# Coverage-guided fuzzing of the engine's loader and quantizer (libFuzzer, clang, ASan+UBSan)
# and of the Python readers of untrusted files (atheris): .pth, .safetensors, the model
# registry (models.json) and the chat's /load files.
#
#   bash tests/fuzz/run.sh SECONDS [TARGET...]
#
# runs each target (default: all of load quantize pth safetensors registry chat_load) for
# SECONDS and fails on any crash, leak, timeout or sanitizer report; the input that caused it
# is left in the work folder (printed at the end): fix the fault and keep the input under
# tests/fuzz/regressions/TARGET/ (tests replay those). Before fuzzing it checks that the
# engine builds with clang without a warning and runs the kernel tests on a clang build.
#
# Needs: python with this package installed (pip install .), clang with libFuzzer (installed
# with apt-get when missing), atheris (installed with pip when missing).
# RWKV_FUZZ_WORK=DIR keeps corpora and builds there (default: a new temporary folder), so a
# long run can go in pieces; RWKV_FUZZ_SKIP_CHECKS=1 skips the clang build and kernel checks
# (for the later pieces of such a run).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash tests/fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
fi
SECONDS_EACH=$1
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(load quantize pth safetensors registry chat_load)

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${RWKV_FUZZ_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/rwkv-fuzz.XXXXXX")}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
echo "fuzz: work folder $WORK"

# ---- tools ----
have_libfuzzer() {
    command -v clang >/dev/null 2>&1 &&
        echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
        clang -x c -fsanitize=fuzzer -o "$WORK/.probe" - >/dev/null 2>&1
}
if ! have_libfuzzer; then
    echo "fuzz: installing clang and its libFuzzer runtime (apt-get)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq clang >/dev/null
    have_libfuzzer || $SUDO apt-get install -y -qq "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev" >/dev/null
    have_libfuzzer || { echo "fuzz: clang cannot build libFuzzer targets" >&2; exit 1; }
fi
if ! "$PYTHON" -c "import rwkv_cli" 2>/dev/null; then
    echo "fuzz: $PYTHON cannot import rwkv_cli: install the package first (pip install .)" >&2
    exit 1
fi
"$PYTHON" -c "import atheris" 2>/dev/null || "$PYTHON" -m pip install -q atheris

# ---- the engine with clang: no warning, and the kernel tests pass on a clang build ----
if [ "${RWKV_FUZZ_SKIP_CHECKS:-0}" != 1 ]; then
    echo "fuzz: building the engine with clang"
    make -s -C "$REPO/native" CC=clang BUILD="$WORK/clang-build" EXTRA_CFLAGS=-Werror
    if ! CC=clang "$PYTHON" -m pytest -q -p no:cacheprovider "$REPO/tests/test_kernels.py" \
        -k "products or nonfinite or vector_functions or allocates" >"$WORK/clang-kernels.log" 2>&1; then
        tail -40 "$WORK/clang-kernels.log" >&2
        echo "fuzz: the kernel tests fail on the clang build (log $WORK/clang-kernels.log)" >&2
        exit 1
    fi
    echo "fuzz: the kernel tests pass on the clang build"
fi

# ---- seeds and targets ----
"$PYTHON" "$REPO/tests/fuzz/make_seeds.py" "$WORK/seeds"
# the engine compiled once for both C targets (two compilers at a time)
FUZZ_CFLAGS=(-std=gnu11 -g -O2 -fno-omit-frame-pointer -fsanitize=address,undefined
    -fno-sanitize-recover=undefined -pthread -I"$REPO/native")
if [[ " ${TARGETS[*]} " == *" load "* || " ${TARGETS[*]} " == *" quantize "* ]]; then
    mkdir -p "$WORK/obj"
    printf '%s\n' "$REPO"/native/*.c | xargs -P 2 -I{} sh -c \
        'clang "$@" -fsanitize=fuzzer-no-link -c "{}" -o "'"$WORK"'/obj/$(basename "{}" .c).o"' \
        clang "${FUZZ_CFLAGS[@]}"
fi
build_c_target() {
    clang "${FUZZ_CFLAGS[@]}" -fsanitize=fuzzer -o "$WORK/fuzz_$1" "$REPO/tests/fuzz/fuzz_$1.c" \
        "$WORK"/obj/*.o -lm
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
summary=()
for target in "${TARGETS[@]}"; do
    case $target in
    load | quantize)
        build_c_target "$target"
        command=("$WORK/fuzz_$target")
        ;;
    pth | safetensors | registry | chat_load)
        command=("$PYTHON" "$REPO/tests/fuzz/fuzz_$target.py")
        ;;
    *)
        echo "fuzz: unknown target $target" >&2
        exit 2
        ;;
    esac
    options=(-max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1
        -artifact_prefix="$WORK/artifacts/$target-")
    [ -f "$REPO/tests/fuzz/$target.dict" ] && options+=(-dict="$REPO/tests/fuzz/$target.dict")
    corpora=("$WORK/corpus/$target" "$WORK/seeds/$target")
    [ -d "$REPO/tests/fuzz/regressions/$target" ] && corpora+=("$REPO/tests/fuzz/regressions/$target")
    mkdir -p "$WORK/corpus/$target" "$WORK/artifacts"
    log="$WORK/$target.log"
    echo "fuzz: $target for ${SECONDS_EACH}s (log $log)"
    start=$(date +%s)
    if (cd "$WORK" && "${command[@]}" "${options[@]}" "${corpora[@]}" >"$log" 2>&1); then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        grep -v '^"' "$log" | tail -40 >&2
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{print $2}' | tail -1)
    summary+=("$(printf '%-12s %-7s %10s runs %6ss' "$target" "$status" "$runs" "$(($(date +%s) - start))")")
done

echo "fuzz: results"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}; inputs in $WORK/artifacts/" >&2
    exit 1
fi
