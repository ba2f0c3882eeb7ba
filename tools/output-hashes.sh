#!/usr/bin/env bash
# output-hashes.sh - run small, seeded train / sample / loglik commands and
# print a SHA-256 of every output, so that a refactoring can be shown to keep
# results bit for bit:
#
#   bash tools/output-hashes.sh build-release /tmp/before > before.txt
#   ... change the code, rebuild ...
#   bash tools/output-hashes.sh build-release /tmp/after > after.txt
#   diff before.txt after.txt          # empty: bit-identical
#
# Covers: training (unet on Fashion-MNIST, mlp on points) and every sampler,
# predictor, corrector and ODE solver, and every likelihood method, on the
# trained checkpoints and on analytic mixtures under every noise family.
# Needs Fashion-MNIST (dataset-fashion-mnist); about 3 minutes on 2 cores.
# Printed text has its timing figures removed; files are hashed as written.
set -euo pipefail
build=${1:?usage: output-hashes.sh BUILD_DIR OUT_DIR}
out=${2:?usage: output-hashes.sh BUILD_DIR OUT_DIR}
SD=$(cd "$build" && pwd)/tools/scorediff
FM=/usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 SCOREDIFF_BLAS_AUTO=0
rm -rf "$out"
mkdir -p "$out"
cd "$out"

# Text output without timing figures (rates, seconds) and progress lines.
clean() { sed -E 's/[0-9][0-9.e+]* ?[a-z ]*\/s\b/RATE/g; s/\b[0-9][0-9.]* ?(s|ms|min)\b/TIME/g' | grep -v '^\s*$' || true; }
run() { # name, command...: its cleaned stdout, and its exit code and message on failure
    local name=$1; shift
    local rc=0
    "$@" --quiet 2>"$name.err" > "$name.out" || rc=$?
    clean < "$name.out" > "$name.txt"
    rm -f "$name.out"
    if [ "$rc" -ne 0 ]; then
        { echo "exit $rc"; clean < "$name.err"; } >> "$name.txt"
        echo "note: $name exited $rc: $(head -c 200 "$name.err")" >&2
    fi
}

"$SD" convert-idx --limit 256 "$FM/train-images-idx3-ubyte.gz" fm >/dev/null 2>&1
"$SD" convert-idx --limit 4 "$FM/t10k-images-idx3-ubyte.gz" fm-test >/dev/null 2>&1
awk 'BEGIN { srand(7); for (i = 0; i < 400; i++) { c = (i % 3) - 1;
     printf "%.6f,%.6f\n", 2*c + 0.3*(rand()-0.5), -c + 0.3*(rand()-0.5) } }' > pts.csv
cat > mix2.json <<'J'
{"weights": [0.3, 0.7], "means": [[-1.5, 0.5], [1.0, -0.5]],
 "covs": [[[0.2, 0.05], [0.05, 0.1]], [[0.3, 0.0], [0.0, 0.15]]]}
J
cat > cov2.json <<'J'
{"C": [[1.0, 0.3], [0.3, 0.5]]}
J
# a 1x4x4 image mixture for the dct family
python3 - <<'P' > mix16.json
import json
D = 16
means = [[0.2 * ((i * 7 + k * 3) % 5 - 2) for i in range(D)] for k in range(2)]
covs = [[[0.05 * (k + 1) if i == j else 0.0 for j in range(D)] for i in range(D)] for k in range(2)]
print(json.dumps({"weights": [0.4, 0.6], "means": means, "covs": covs}))
P

# training
"$SD" train --data fm --model unet --ch 8 --mult 1,2 --num-res-blocks 1 --sde ve --batch 16 \
    --steps 12 --warmup 2 --ckpt-every 6 --seed 1 --threads 2 --out unet --quiet 2>/dev/null
"$SD" train --data pts.csv --model mlp --sde vp --batch 32 --steps 40 --seed 2 --threads 2 \
    --out mlp --quiet 2>/dev/null
"$SD" train --data pts.csv --model mlp --sde ncsn:L=8,sigma_max=5 --batch 32 --steps 20 \
    --seed 3 --threads 2 --out mlpn --quiet 2>/dev/null

# sampling from the trained U-Net: every sampler, predictor, corrector, solver
S=(sample --ckpt unet --n 4 --seed 5)
run s_langevin "$SD" "${S[@]}" --sampler langevin --levels 4 --steps-per-level 3 --out s_langevin.png
for p in em rd ancestral none; do
    run "s_pc_$p" "$SD" "${S[@]}" --sampler pc --predictor "$p" --steps 8 --out "s_pc_$p.png"
done
run s_pc_nocorr "$SD" "${S[@]}" --sampler pc --corrector none --steps 8 --out s_pc_nocorr.png
for m in euler heun rk4; do
    run "s_ode_$m" "$SD" "${S[@]}" --sampler ode --method "$m" --steps 6 --out "s_ode_$m.png"
done
run s_ode_rk45 "$SD" "${S[@]}" --sampler ode --rtol 1e-3 --atol 1e-3 --out s_ode_rk45.png
run s_traj "$SD" "${S[@]}" --sampler pc --steps 6 --out s_traj_grid.png --trajectory s_traj.png
run s_outdir "$SD" "${S[@]}" --sampler pc --steps 5 --out-dir s_outdir
run s_inpaint "$SD" "${S[@]}" --sampler pc --steps 5 --image fm-test/00000.png \
    --mask fm-test/00001.png --out s_inpaint.png
# likelihoods on the trained U-Net
L=(loglik --ckpt unet --data fm-test --seed 6)
run l_ode "$SD" "${L[@]}" --method ode --rtol 1e-3 --atol 1e-3 --divergence hutchinson --out l_ode.csv
run l_elbo "$SD" "${L[@]}" --method elbo --steps 10 --out l_elbo.csv
run l_iwae "$SD" "${L[@]}" --method iwae --K 3 --steps 10 --decoder iso --out l_iwae.csv

# points: trained mlps and analytic mixtures under every family
for ck in mlp mlpn; do
    run "p_${ck}_pc" "$SD" sample --ckpt "$ck" --n 16 --seed 7 --sampler pc --steps 10 --out "p_${ck}_pc.csv"
    run "p_${ck}_ode" "$SD" sample --ckpt "$ck" --n 16 --seed 7 --sampler ode --out "p_${ck}_ode.csv"
    run "p_${ck}_lg" "$SD" sample --ckpt "$ck" --n 16 --seed 7 --sampler langevin --levels 4 \
        --steps-per-level 3 --out "p_${ck}_lg.csv"
    run "p_${ck}_ll" "$SD" loglik --ckpt "$ck" --data pts.csv --limit 20 --method ode --out "p_${ck}_ll.csv"
    run "p_${ck}_iw" "$SD" loglik --ckpt "$ck" --data pts.csv --limit 20 --method iwae --K 4 \
        --steps 10 --out "p_${ck}_iw.csv"
done
for fam in ncsn:L=10 ve vp subvp "dense:C=cov2.json" state; do
    tag=${fam%%:*}
    extra=()
    [ "$tag" = state ] && extra=(--no-denoise)
    for smp in "pc --steps 20" "ode" "langevin --levels 5 --steps-per-level 4"; do
        # shellcheck disable=SC2086 # the sampler's words split on purpose
        run "g_${tag}_${smp%% *}" "$SD" sample --gmm mix2.json --sde "$fam" --n 32 --seed 8 \
            --sampler $smp "${extra[@]}" --out "g_${tag}_${smp%% *}.csv"
    done
    run "gl_${tag}_ode" "$SD" loglik --gmm mix2.json --sde "$fam" --data pts.csv --limit 10 \
        --method ode --out "gl_${tag}_ode.csv"
    if [ "$tag" != dense ] && [ "$tag" != state ]; then
        run "gl_${tag}_elbo" "$SD" loglik --gmm mix2.json --sde "$fam" --data pts.csv --limit 10 \
            --method elbo --steps 10 --out "gl_${tag}_elbo.csv"
    fi
done
run g_dct_pc "$SD" sample --gmm mix16.json --sde dct:shape=1x4x4 --n 8 --seed 9 --sampler pc \
    --steps 20 --out g_dct_pc.png
run g_dct_ode "$SD" sample --gmm mix16.json --sde dct:shape=1x4x4 --n 8 --seed 9 --sampler ode \
    --out g_dct_ode.png

# hashes of every output file (checkpoints, metrics, configs, PNGs, CSVs, texts)
find . -type f ! -name '*.err' ! -name 'train.log' ! -path './fm/*' ! -path './fm-test/*' \
    ! -name 'lock' | LC_ALL=C sort | while read -r f; do
    case "$f" in
    */metrics.csv) # wall-clock columns vary: hash the deterministic ones
        h=$(python3 -c 'import csv,sys,hashlib
r=list(csv.reader(open(sys.argv[1])))
keep=[i for i,n in enumerate(r[0]) if not any(w in n for w in ("time","sec","elapsed","per_s","img_s","/s"))]
print(hashlib.sha256("\n".join(",".join(row[i] for i in keep) for row in r).encode()).hexdigest())' "$f");;
    */report.html) # plots metrics.csv's wall-clock columns (images/s) too; its
        continue;;   # inputs (metrics, grids, config) are hashed above and below
    *) h=$(sha256sum "$f" | cut -d' ' -f1);;
    esac
    echo "$h  $f"
done
