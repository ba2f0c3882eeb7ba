#!/usr/bin/env bash
# sampler_grids.sh - the samplers side by side on a trained image model
# (issue 14): 64-image grids from the same seed by the few-step samplers at
# about 10, 20 and 35 score evaluations per image (heun: N steps cost 2N - 1,
# so N = 5, 10, 18 give 9, 19, 35; dpm2m: N steps, N NFE), beside annealed
# Langevin at the run's NCSNv2 settings and predictor-corrector at 1,000
# steps; prints one row per grid: sampler, settings, NFE per image (from
# scorediff's own count), wall seconds, and the grid's path.
#
#   tools/bench/sampler_grids.sh BUILD_DIR RUN_DIR OUT_DIR [N]   (N images, default 64)
#
# Wall times are for the whole command (model load included) with
# OMP_NUM_THREADS (default 2); on a shared machine compare rows of one run.
set -euo pipefail
build=${1:?usage: sampler_grids.sh BUILD_DIR RUN_DIR OUT_DIR [N]}
run=${2:?usage: sampler_grids.sh BUILD_DIR RUN_DIR OUT_DIR [N]}
out=${3:?usage: sampler_grids.sh BUILD_DIR RUN_DIR OUT_DIR [N]}
n=${4:-64}
SD=$(cd "$build" && pwd)/tools/scorediff
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$out"

printf '%-10s %-34s %8s %9s  %s\n' sampler settings NFE/image wall_s grid
one() { # name, settings..., run with the sampler options
    local name=$1; shift
    local png="$out/$name.png" log="$out/$name.log"
    local t0 t1
    t0=$(date +%s.%N)
    if ! "$SD" sample --ckpt "$run" --n "$n" --seed 0 --quiet --out "$png" "$@" >"$log" 2>&1; then
        printf '%-10s %-34s failed: %s\n' "$name" "$*" "$(tail -1 "$log")"
        return 0
    fi
    t1=$(date +%s.%N)
    # sample's summary line states "NFE ... per sample" (tools/cmd_sample.c)
    local nfe
    nfe=$(grep -oE '[0-9]+ NFE per sample|NFE per sample[^0-9]*[0-9]+' "$log" | grep -oE '[0-9]+' | head -1 || true)
    printf '%-10s %-34s %8s %9.1f  %s\n' "$name" "$*" "${nfe:-?}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$png"
}
for s in 5 10 18; do one "heun-$s" --sampler heun --steps "$s"; done
for s in 10 20 35; do one "dpm2m-$s" --sampler dpm2m --steps "$s"; done
one langevin --sampler langevin
one pc-1000 --sampler pc --steps 1000
