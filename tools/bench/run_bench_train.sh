#!/bin/sh
# run_bench_train.sh - unet-28 training: scorediff vs its PyTorch mirror, in
# one invocation, on the same machine state (issue #3).
#
#   tools/bench/run_bench_train.sh [BUILD_DIR] [BATCH...]     (default: build, 64 128)
#
# For every batch size, scorediff (BUILD_DIR/tools/bench/bench_train --run B)
# and PyTorch (/usr/bin/python3 bench_train_torch.py --batch B) each run in a
# fresh process, so each peak RSS is that run's alone. Both get
# OMP_NUM_THREADS=2; PyTorch also OPENBLAS_NUM_THREADS=1 and
# torch.set_num_threads(2), its best setting on two cores (THREADS=n changes
# the 2 for both). REPEATS=n (1) runs every pair n times (alternating which
# goes first) and reports the median over repeats of each figure;
# BENCH_WARMUP, BENCH_WINDOWS and BENCH_STEPS pass through (bench_train.c).
# Ratios:
#   speed  = scorediff img/s / torch img/s       (target >= 1, aim 1.5)
#   memory = scorediff peak RSS / torch peak RSS (target <= 0.5)
# cpu ms/img (user + system CPU time per image, all threads) is printed too:
# on a shared machine it is less sensitive to other load than img/s (a
# descheduled OpenMP thread stalls every barrier). Compare figures from one
# invocation only.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
batches=${*:-64 128}
repeats=${REPEATS:-1}
threads=${THREADS:-2}
sd_bin="$build/tools/bench/bench_train"
py=/usr/bin/python3 # Debian's torch; the pyenv python3 on PATH has none

if [ ! -x "$sd_bin" ]; then
    echo "run_bench_train.sh: $sd_bin not found (build first: ninja -C $build)" >&2
    exit 2
fi
if ! "$py" -c "import torch" 2>/dev/null; then
    echo "run_bench_train.sh: $py cannot import torch" >&2
    exit 2
fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT INT TERM

run_sd() {
    OMP_NUM_THREADS=$threads "$sd_bin" --run "$1" | grep '^RESULT' >>"$tmp"
}
run_torch() {
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 "$py" "$here/bench_train_torch.py" \
        --batch "$1" --threads "$threads" | grep '^RESULT' >>"$tmp"
}

for b in $batches; do
    r=0
    while [ "$r" -lt "$repeats" ]; do
        echo "batch $b, repeat $((r + 1))/$repeats ..." >&2
        if [ $((r % 2)) -eq 0 ]; then run_sd "$b"; run_torch "$b"; else run_torch "$b"; run_sd "$b"; fi
        r=$((r + 1))
    done
done

# One row per batch: the median over repeats of each figure.
awk -v batches="$batches" '
function val(line, key,    i, n, kv, f) {
    n = split(line, f, " ")
    for (i = 1; i <= n; i++) { split(f[i], kv, "="); if (kv[1] == key) return kv[2] }
    return -1
}
function median(arr, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && arr[j] < arr[j-1]; j--) { t = arr[j]; arr[j] = arr[j-1]; arr[j-1] = t }
    return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
{
    impl = val($0, "impl"); b = val($0, "batch")
    k = impl SUBSEP b; n[k]++
    ips[k, n[k]] = val($0, "img_s"); rss[k, n[k]] = val($0, "peak_rss_mib")
    cpu[k, n[k]] = val($0, "cpu_ms_img")
}
END {
    printf "%5s %10s %10s %7s %13s %13s %7s %10s %10s\n", "batch", "scorediff", "torch", "speed", "scorediff", "torch", "memory", "scorediff", "torch"
    printf "%5s %10s %10s %7s %13s %13s %7s %10s %10s\n", "", "img/s", "img/s", "ratio", "peak RSS", "peak RSS", "ratio", "cpu ms/img", "cpu ms/img"
    nb = split(batches, bl, " ")
    for (i = 1; i <= nb; i++) {
        b = bl[i]; s = "scorediff" SUBSEP b; t = "torch" SUBSEP b
        if (!(s in n) || !(t in n)) { printf "%5s  (missing result)\n", b; continue }
        for (j = 1; j <= n[s]; j++) { a1[j] = ips[s, j]; a2[j] = rss[s, j]; a5[j] = cpu[s, j] }
        for (j = 1; j <= n[t]; j++) { a3[j] = ips[t, j]; a4[j] = rss[t, j]; a6[j] = cpu[t, j] }
        si = median(a1, n[s]); sr = median(a2, n[s]); ti = median(a3, n[t]); tr = median(a4, n[t])
        sc = median(a5, n[s]); tc = median(a6, n[t])
        printf "%5s %10.1f %10.1f %6.2fx %9.0f MiB %9.0f MiB %6.2fx %10.1f %10.1f\n", b, si, ti, si / ti, sr, tr, sr / tr, sc, tc
    }
    print "(img/s: median over the timing windows, then over repeats; raw runs below)"
}' "$tmp"
sed 's/^RESULT /  /' "$tmp"
