#!/usr/bin/env bash
# Builds scorediff twice (release, and ASan+UBSan) and runs the whole test
# suite in both. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# --with-data: tests/test_data.c reads Fashion-MNIST and reports SKIP (exit 77)
# without it; --with-browser: tests/test_report.c renders the report page in
# headless Chromium, SKIP without it. CI must run every suite.
bash tools/install-deps.sh --with-data --with-browser

jobs=$(nproc)
run_suite() {
  local dir=$1; shift
  local log="$dir.setup.log"
  if [ -d "$dir" ]; then set -- --wipe "$@"; fi
  if ! meson setup "$dir" "$@" >"$log" 2>&1; then cat "$log"; return 1; fi
  ninja -C "$dir" -j "$jobs"
  meson test -C "$dir" --print-errorlogs --num-processes 1
}

echo "== release build"
run_suite build-release --buildtype=release

echo "== install into a temporary prefix; the README's example built out of tree (pkg-config)"
bash tools/check-install.sh build-release

echo "== ASan + UBSan build"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
run_suite build-asan --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false

echo "== all tests passed (release and ASan+UBSan)"
