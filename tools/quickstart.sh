#!/usr/bin/env bash
# The quick-start job (README): installs the Debian packages (including the
# Fashion-MNIST data set), builds scorediff, trains a small U-Net score model
# on 5,000 Fashion-MNIST images for a few minutes, samples a 64-image PNG grid
# and reports bits/dim on 32 test images. Everything goes under $RUN
# (default runs/quickstart); the paths are printed at the end.
#
# Tunables (environment): STEPS (default 1200: ~4 minutes in all on 2 cores),
# TRAIN_IMAGES (5000), RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh --with-data

RUN=${RUN:-runs/quickstart}
STEPS=${STEPS:-1200}
TRAIN_IMAGES=${TRAIN_IMAGES:-5000}
FM=/usr/share/datasets/fashion-mnist

if [ ! -d build-release ]; then meson setup build-release --buildtype=release >/dev/null; fi
ninja -C build-release tools/scorediff
SD=build-release/tools/scorediff

mkdir -p "$RUN/data"
[ -d "$RUN/data/train" ] || "$SD" convert-idx --limit "$TRAIN_IMAGES" "$FM/train-images-idx3-ubyte.gz" "$RUN/data/train"
[ -d "$RUN/data/test" ] || "$SD" convert-idx --limit 32 "$FM/t10k-images-idx3-ubyte.gz" "$RUN/data/test"

# A small U-Net (16 channels, 2 levels, 1 block per level) so that a CPU
# trains it in minutes; `--model unet-28` is the reference network.
if [ -f "$RUN/model/checkpoint.safetensors" ]; then
  "$SD" train --resume "$RUN/model" --steps "$STEPS"
else
  "$SD" train --data "$RUN/data/train" --model unet --ch 16 --mult 1,2 --num-res-blocks 1 \
    --sde ve --batch 64 --steps "$STEPS" --lr 1e-3 --warmup 50 --ema 0.99 --ckpt-every 400 \
    --out "$RUN/model"
fi
"$SD" sample --ckpt "$RUN/model" --sampler pc --predictor rd --corrector none --steps 250 \
  --n 64 --out "$RUN/samples.png"
"$SD" loglik --ckpt "$RUN/model" --data "$RUN/data/test" --method iwae --K 4 --steps 100 \
  --out "$RUN/loglik.csv" 2>&1 | tee "$RUN/loglik.txt"
# the run's page again, now with the likelihood summary (train wrote it at
# every checkpoint)
"$SD" report "$RUN/model"

cat <<MSG

== quick start done
  checkpoint   $RUN/model/checkpoint.safetensors
  metrics      $RUN/model/metrics.csv
  samples      $RUN/samples.png
  likelihood   $RUN/loglik.csv (per image), summary in $RUN/loglik.txt
  report page  $RUN/model/report.html (open it in a browser: file://$(cd "$RUN/model" && pwd)/report.html)
MSG
