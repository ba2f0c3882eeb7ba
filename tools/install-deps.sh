#!/usr/bin/env bash
# Installs scorediff's Debian 12 build and test dependencies (run as root).
# Everything comes from Debian packages; nothing is downloaded at build time.
set -euo pipefail
packages=(
  meson ninja-build pkg-config gcc libc6-dev
  libopenblas-dev libfftw3-dev libstb-dev libcjson-dev liblapacke-dev zlib1g-dev
  check
)
# Extra packages for the quick-start demo (Fashion-MNIST) when asked.
if [ "${1:-}" = "--with-data" ]; then packages+=(dataset-fashion-mnist); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
