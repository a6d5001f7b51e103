#!/usr/bin/env bash
# Builds dist/bin/: one PyInstaller onedir bundle (dist/bin/.underlay/) with the
# compiled thin client beside its executable (cni/handoff.c, .underlay/handoff),
# the CNI plugin names as symlinks to the client, `underlayd` and `underlay`
# (the operator's command) as symlinks to the executable, then smoke-tests each name.
#
#   build/build.sh              (what `make build` runs)
#   PYTHON=python3.11 build/build.sh
#   build/build.sh --importtime (a diagnostic bundle in build/work/importtime/
#                                whose executables print `-X importtime`)
#
# The build string (git describe + UTC time) goes into cni/_build.py inside the
# bundle only; the checkout never carries that file.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
# every executable of cni/registry.py: a symlink each to the one bundle
PLUGINS=$("$PYTHON" -m cni.registry | tr '\n' ' ')
WORK=$ROOT/build/work
OUT=$ROOT/dist/bin
export UNDERLAY_IMPORTTIME=0
if [ "${1:-}" = "--importtime" ]; then
    UNDERLAY_IMPORTTIME=1
    WORK=$ROOT/build/work/importtime-work
    OUT=$ROOT/build/work/importtime
fi

# --dirty refreshes the index, which fails while a concurrent commit holds its lock.
describe=$(git describe --always --dirty --tags 2>/dev/null || git describe --always --tags 2>/dev/null || echo nogit)
export UNDERLAY_BUILD="$describe $(date -u +%Y-%m-%dT%H:%M:%SZ)"
export UNDERLAY_GEN_DIR=$WORK/gen
# PyInstaller's cache (bincache) is per user by default, and --clean empties it: a build in another
# checkout at the same time would read a half-written or vanished cache ("bincache may be corrupted").
export PYINSTALLER_CONFIG_DIR=$WORK/pyinstaller-cache

start=$(date +%s)
stamp=$("$PYTHON" build/source_stamp.py)   # of the sources as this build reads them
rm -rf "$WORK/dist"
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --workpath "$WORK/pyi" --distpath "$WORK/dist" build/underlay.spec

# Swap the new tree in whole, so a failed build leaves the last good one.
staging=$OUT.new
rm -rf "$staging"
mkdir -p "$staging"
mv "$WORK/dist/underlay" "$staging/.underlay"
CNI_PLUGINS=$("$PYTHON" -m cni.registry main ipam)
echo "$CNI_PLUGINS" > "$staging/.underlay/cni-plugins"   # what build/install.sh installs
# The CNI plugins' names are the compiled thin client (it execs the bundle when it does not hand off).
# It answers VERSION itself: the spec wrote the bundle's answer into $UNDERLAY_GEN_DIR/handoff_version.h.
# Linked statically against musl (musl-tools), position-independent: a runtime's exec reaches its main()
# without a dynamic loader (glibc's ld.so and libc.so mapping and relocating: ~0.3 ms of every exec;
# glibc's own libc.a makes a 750 KB client). gcc's musl-gcc wrapper cannot link -static-pie: the
# startup files are named here.
CC=${CC:-cc}
musl=/usr/lib/$(uname -m)-linux-musl
if [ ! -f "$musl/rcrt1.o" ]; then
    echo "build: musl's static-pie startup $musl/rcrt1.o is missing: apt-get install musl-tools" >&2
    exit 1
fi
"$CC" -O2 -fPIE -Wall -Wextra -Werror -nostdinc -isystem "/usr/include/$(uname -m)-linux-musl" \
    -isystem "$("$CC" -print-file-name=include)" -I"$UNDERLAY_GEN_DIR" -c -o "$WORK/handoff.o" cni/handoff.c
"$CC" -static-pie -nostdlib -s -o "$staging/.underlay/handoff" "$musl/rcrt1.o" "$musl/crti.o" \
    "$("$CC" -print-file-name=crtbeginS.o)" "$WORK/handoff.o" "$musl/libc.a" "$("$CC" -print-libgcc-file-name)" \
    "$("$CC" -print-file-name=crtendS.o)" "$musl/crtn.o"
for plugin in $PLUGINS; do
    if printf '%s\n' $CNI_PLUGINS | grep -qx "$plugin"; then
        ln -s .underlay/handoff "$staging/$plugin"
    else
        ln -s .underlay/underlay "$staging/$plugin"
    fi
done
[ "$UNDERLAY_IMPORTTIME" = 1 ] || rm -f "$ROOT/build/work/bin.stamp"
rm -rf "$OUT"
mv "$staging" "$OUT"

# Smoke test: every name answers VERSION with our build string.
for plugin in $PLUGINS; do
    set +e
    out=$(CNI_COMMAND=VERSION "$OUT/$plugin" </dev/null 2>&1)
    code=$?
    set -e
    if [ $code -eq 0 ] && [[ $out == *"$UNDERLAY_BUILD"* ]]; then
        echo "build: $plugin ok"
    else
        echo "build: $plugin failed VERSION (exit $code): $out" >&2
        exit 1
    fi
done
if out=$("$OUT/underlay" --version 2>&1) && [[ $out == *"$UNDERLAY_BUILD"* ]]; then
    echo "build: underlay (operator command) ok"
else
    echo "build: underlay --version failed: $out" >&2
    exit 1
fi
[ "$UNDERLAY_IMPORTTIME" = 1 ] || echo "$stamp" > "$ROOT/build/work/bin.stamp"
echo "build: ${OUT#$ROOT/} ($(du -sh "$OUT/.underlay" | cut -f1), $(( $(date +%s) - start )) s): $UNDERLAY_BUILD"
