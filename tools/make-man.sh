#!/usr/bin/env bash
# make-man.sh SCOREDIFF OUT.1 - the scorediff(1) man page, generated from the
# program's own help (Debian help2man), so that it cannot drift from --help:
# NAME/SYNOPSIS/DESCRIPTION from `scorediff --help`, VERSION from --version,
# and one section per command from `scorediff COMMAND --help`.
set -euo pipefail
bin=$1
out=$2
inc=$(mktemp)
trap 'rm -f "$inc" "$out.tmp"' EXIT
{
    echo "[COMMANDS]"
    for cmd in train sample loglik convert-idx info report; do
        echo ".SS $cmd"
        echo ".nf"
        # roff: a leading '.' or "'" would be a request; backslashes are escapes
        "$bin" "$cmd" --help | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
        echo ".fi"
    done
    echo "[FILES]"
    echo "A training run lives in one directory: config.json, checkpoint.safetensors,"
    echo "metrics.csv, samples/ and report.html (see train --help)."
    echo "[SEE ALSO]"
    echo "The C library: the headers in include/sd/ (pkg-config scorediff) are its manual."
} >"$inc"
help2man --no-info --no-discard-stderr --section=1 \
    --name="score-based diffusion models: train, sample, log-likelihoods" \
    --include="$inc" --output="$out.tmp" "$bin"
mv "$out.tmp" "$out"
