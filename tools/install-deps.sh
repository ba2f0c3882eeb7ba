#!/usr/bin/env bash
# Installs scorediff's Debian 12 build and test dependencies (run as root).
# Everything comes from Debian packages; nothing is downloaded at build time.
set -euo pipefail
packages=(
  meson ninja-build pkg-config gcc libc6-dev
  libopenblas-dev libfftw3-dev libstb-dev libcjson-dev liblapacke-dev zlib1g-dev
  check help2man
)
# Extra packages when asked: --with-data for the quick-start demo
# (Fashion-MNIST), --with-browser for tests/test_report.c, which renders
# report.html in headless Chromium (and skips, exit 77, without it).
for flag in "$@"; do
  case "$flag" in
    --with-data) packages+=(dataset-fashion-mnist) ;;
    --with-browser) packages+=(chromium) ;;
    *) echo "install-deps.sh: unknown option $flag (--with-data, --with-browser)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
