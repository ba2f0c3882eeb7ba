#!/usr/bin/env bash
# check-install.sh BUILD - install BUILD into a temporary prefix and use it as
# an outside program would (issue 17): every public header is installed and
# compiles on its own, scorediff.pc gives the flags, the shared library has
# its SONAME, the CLI and its man page are there, and the README's example
# program (tools/example/example.c) builds outside the tree with
#     cc example.c $(pkg-config --cflags --libs scorediff)
# against the shared library, runs, and passes its own check (log p on a blob
# above log p between the blobs). Run by tools/test-all.sh after the release
# tests. Exits non-zero naming the first thing that is wrong.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:?usage: check-install.sh BUILD_DIR}" && pwd)
prefix=$(mktemp -d /tmp/scorediff-prefix.XXXXXX)
work=$(mktemp -d /tmp/scorediff-example.XXXXXX)
old_prefix=$(meson introspect "$build" --buildoptions |
    python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])')
# The build keeps its own prefix afterwards (a later `meson install` goes where it went before).
trap 'meson configure "$build" -Dprefix="$old_prefix" >/dev/null; rm -rf "$prefix" "$work"' EXIT
fail() { echo "check-install: $*" >&2; exit 1; }

# Same objects, another prefix: only the install paths and the .pc change.
meson configure "$build" -Dprefix="$prefix" >/dev/null
ninja -C "$build" >/dev/null
meson install -C "$build" --quiet

libdir=$(dirname "$(find "$prefix" -name libscorediff.so -print -quit)")
[ -n "$libdir" ] && [ -f "$libdir/libscorediff.so" ] || fail "no libscorediff.so under $prefix"
[ -f "$libdir/libscorediff.a" ] || fail "no static libscorediff.a in $libdir"
version=$(meson introspect "$build" --projectinfo | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
soname=$(readelf -d "$libdir/libscorediff.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libscorediff.so.${version%%.*}" ] || fail "SONAME is '$soname'"
# (grep reads whole outputs here: grep -q in a pipe would end nm with SIGPIPE,
# which pipefail reports as a failure)
grep -q ' T sd_version$' <<<"$(nm -D --defined-only "$libdir/libscorediff.so")" ||
    fail "sd_version not exported"
grep -q ' T sd_version$' <<<"$(nm --defined-only "$libdir/libscorediff.a" 2>/dev/null)" ||
    fail "sd_version not in libscorediff.a"
[ -x "$prefix/bin/scorediff" ] || fail "no $prefix/bin/scorediff"
"$prefix/bin/scorediff" --version | grep -q "^scorediff $version " || fail "scorediff --version is not $version"
man=$(find "$prefix" -path '*man1/scorediff.1' -print -quit)
[ -s "$man" ] && grep -q '^\.SS train' "$man" || fail "no man page with the commands under $prefix"

export PKG_CONFIG_PATH="$libdir/pkgconfig"
[ "$(pkg-config --modversion scorediff)" = "$version" ] || fail "pkg-config version is not $version"
cflags=$(pkg-config --cflags scorediff)
libs=$(pkg-config --libs scorediff)

# Every public header of the tree is installed and compiles by itself.
n=0
for h in "$root"/lib/include/sd/*.h "$root"/models/include/sd/*.h "$root"/samplers/include/sd/*.h sd/version.h; do
    name=$(basename "$h")
    [ -f "$prefix/include/sd/$name" ] || fail "header sd/$name not installed"
    echo "#include <sd/$name>" | cc -std=c11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only \
        $cflags -x c - || fail "sd/$name does not compile on its own"
    n=$((n + 1))
done

cp "$root/tools/example/example.c" "$work/"
cd "$work"
# shellcheck disable=SC2086 # pkg-config's flags are meant to split
cc -std=c11 -Wall -Wextra -Wpedantic -Werror example.c $cflags $libs -o example
grep -q "libscorediff.so.${version%%.*} => $libdir/" <<<"$(LD_LIBRARY_PATH="$libdir" ldd ./example)" ||
    fail "example is not linked against the installed shared library"
LD_LIBRARY_PATH="$libdir" OMP_NUM_THREADS=2 ./example "$work/run" || fail "the example program failed"
echo "check-install: $n headers, libscorediff.so ($soname) and .a, scorediff(1), scorediff.pc $version; example built out of tree and ran"
