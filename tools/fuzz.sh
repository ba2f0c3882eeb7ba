#!/usr/bin/env bash
# fuzz.sh - build one libFuzzer harness and run it for a bounded time.
#
#   tools/fuzz.sh HARNESS [SECONDS]      e.g. tools/fuzz.sh safetensors 600
#   tools/fuzz.sh --list
#
# Harnesses: safetensors (checkpoint reader), image (image decoder and
# preparation), csv (point loader), cli (train --dry-run and info on generated
# files, in process).
#
# Each harness is compiled with clang -fsanitize=fuzzer,address,undefined
# directly from its sources (not through meson) into a separate build dir,
# $FUZZ_BUILD_DIR (default: build-fuzz/ at the repository root, git-ignored).
# The committed seeds in tests/fuzz/corpus/HARNESS/ are read only; new inputs
# go to $FUZZ_BUILD_DIR/corpus-HARNESS/, crashes to
# $FUZZ_BUILD_DIR/artifacts-HARNESS/. Prints the number of executions; exits
# non-zero if the fuzzer found a crash, leak, sanitizer report or timeout.
#
# Adding a harness: one case below setting `srcs` (harness + library sources
# it needs, relative to the root), `libs` (pkg-config packages) and optionally
# `dict` (a libFuzzer dictionary).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
harnesses="safetensors image csv cli"

usage() {
    echo "usage: $0 HARNESS [SECONDS]   (harnesses: $harnesses)" >&2
    exit 2
}

[ $# -ge 1 ] || usage
name=$1
secs=${2:-60}
[ "$name" = "--list" ] && { echo "$harnesses"; exit 0; }
[[ "$secs" =~ ^[0-9]+$ ]] || usage

dict=""
cflags=""
fuzz_args=()
case "$name" in
safetensors)
    srcs="tests/fuzz/fuzz_safetensors.c lib/io/safetensors.c lib/core/status.c lib/io/file.c"
    libs="libcjson"
    dict="tests/fuzz/safetensors.dict"
    ;;
image)
    srcs="tests/fuzz/fuzz_image.c lib/io/stb_image_impl.c lib/io/data_image.c lib/io/data_csv.c lib/core/status.c lib/core/mem_budget.c lib/io/file.c"
    libs="zlib"
    ;;
csv)
    srcs="tests/fuzz/fuzz_csv.c lib/io/data_csv.c lib/io/data_image.c lib/io/stb_image_impl.c lib/core/status.c lib/core/mem_budget.c lib/io/file.c"
    libs="zlib"
    ;;
cli)
    # the whole program but its main(): every library, model, sampler and command source
    srcs="tests/fuzz/fuzz_cli.c $(ls lib/*/*.c models/*.c models/sde/*.c samplers/*.c tools/cli.c tools/cmd_*.c tools/report_inputs.c tools/svg_plot.c)"
    libs="openblas fftw3f libcjson lapacke zlib"
    cflags="-fopenmp -Wno-pass-failed -Itools -Imodels -Imodels/include -Isamplers/include"
    fuzz_args=(-close_fd_mask=3)
    ;;
*)
    echo "$0: unknown harness '$name'" >&2
    usage
    ;;
esac

out=${FUZZ_BUILD_DIR:-$root/build-fuzz}
mkdir -p "$out/corpus-$name" "$out/artifacts-$name"
seeds="$root/tests/fuzz/corpus/$name"
bin="$out/fuzz_$name"

cd "$root"
# shellcheck disable=SC2086,SC2046 # word splitting of the source and flag lists is intended
clang -std=c11 -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Ilib/include -Ilib $cflags \
    $srcs $(pkg-config --cflags --libs $libs) -lm -o "$bin"

args=(-max_total_time="$secs" -timeout=10 -print_final_stats=1
      -artifact_prefix="$out/artifacts-$name/")
[ -n "$dict" ] && args+=(-dict="$root/$dict")
args+=("${fuzz_args[@]}")
corpora=("$out/corpus-$name")
[ -d "$seeds" ] && corpora+=("$seeds")

log="$out/fuzz_$name.log"
status=0
"$bin" "${args[@]}" "${corpora[@]}" >"$log" 2>&1 || status=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
tail -n 4 "$log" | grep -v '^stat::' || true
# libFuzzer's last status line: edges covered (cov) and features (ft)
cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.*\(cov: [0-9]* ft: [0-9]*\).*/\1/p')
echo "fuzz $name: ${execs:-0} executions in ${secs}s, ${cov:-cov: ?}, corpus $(find "$out/corpus-$name" -type f | wc -l) files, log $log"
if [ "$status" -ne 0 ]; then
    echo "fuzz $name: FAILED (exit $status); artifacts in $out/artifacts-$name/" >&2
    grep -m 5 -E 'ERROR|SUMMARY|Test unit written' "$log" >&2 || true
    exit "$status"
fi
