#!/bin/sh
# Installs underlay's plugins into a CNI bin directory (default /opt/cni/bin).
#
#   build/install.sh [--from DIR] [--prefix DIR] [--destdir DIR]
#                    [--plugin-prefix P] [--bin-dir DIR] [--force] [--uninstall]
#
# `make install` runs it with DESTDIR, PREFIX, PLUGIN_PREFIX, BIN_DIR (default
# /usr/local/bin) and FORCE=1; the container image (conf/image) runs the same
# script against the host's /opt/cni/bin, without --bin-dir. POSIX sh: it also
# runs under busybox.
#
# What lands in the directory:
#   .underlay-<id>/            the onedir bundle (<id>: checksum of its files)
#   <P>macvlan, <P>ipvlan, ... symlinks to .underlay-<id>/handoff (the compiled
#                              thin client, which runs .underlay-<id>/underlay when
#                              no agent serves), one per plugin built (<P> is
#                              --plugin-prefix, default none)
#   .underlay-manifest         every name this script installed there
# and, with --bin-dir, the operator's command on PATH:
#   <bin-dir>/underlay         a symlink to <prefix>/.underlay-<id>/underlay
#                              (listed in the manifest by its absolute path)
#
# Safety rules:
#   - a name that exists and is not ours (not in the manifest, or no longer a
#     symlink into one of our bundles) is never replaced without --force: the
#     reference plugins often live there under the same names. Nothing is
#     changed unless every name can be installed. <bin-dir>/underlay is not
#     replaced even with --force: whatever is there is no CNI plugin of ours.
#   - links are switched atomically (new symlink, then rename over the old), and
#     the bundle the links pointed to before is kept until the next install, so
#     a plugin exec'd by a runtime during the upgrade still finds its files.
set -eu

FROM=dist/bin
PREFIX=/opt/cni/bin
DESTDIR=
PLUGIN_PREFIX=
BIN_DIR=
FORCE=0
UNINSTALL=0

die() { echo "install: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --from) FROM=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --destdir) DESTDIR=$2; shift 2 ;;
        --plugin-prefix) PLUGIN_PREFIX=$2; shift 2 ;;
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

case $PLUGIN_PREFIX in
    */*|.*) die "--plugin-prefix must be a plain name prefix: $PLUGIN_PREFIX" ;;
esac
case $PLUGIN_PREFIX in
    *[!A-Za-z0-9._-]*) die "--plugin-prefix may hold only letters, digits, '.', '_' and '-': $PLUGIN_PREFIX" ;;
esac

case $BIN_DIR in
    ''|/*) ;;
    *) die "--bin-dir must be an absolute path: $BIN_DIR" ;;
esac

TARGET=$DESTDIR$PREFIX
MANIFEST=$TARGET/.underlay-manifest
ENTRY=underlay            # the bundle's executable
THIN=handoff              # the compiled thin client beside it: what the plugin names link to
TOOL=underlay              # the operator's command: on PATH, never in the CNI bin dir

in_manifest() {
    [ -f "$MANIFEST" ] && grep -qxF "$1" "$MANIFEST"
}

# A name is ours when we installed it and it is still a symlink into one of
# our bundles; anything else there belongs to someone else. Names starting
# with / are tool links outside the CNI bin dir (paths without DESTDIR).
is_ours() {
    in_manifest "$1" || return 1
    case $1 in
        /*) path=$DESTDIR$1; pattern="$PREFIX/.underlay-*/$ENTRY" ;;
        *) path=$TARGET/$1; pattern=".underlay-*/$THIN" ;;
    esac
    [ -L "$path" ] || return 1
    # shellcheck disable=SC2254
    case $(readlink "$path") in
        $pattern) return 0 ;;
        .underlay-*/"$ENTRY") return 0 ;;   # a plugin link of an install before the thin client
    esac
    return 1
}

# Where a manifest name lives.
installed_path() {
    case $1 in
        /*) echo "$DESTDIR$1" ;;
        *) echo "$TARGET/$1" ;;
    esac
}

write_manifest() {
    # $@: names; written atomically, sorted, without duplicates
    printf '%s\n' "$@" | sed '/^$/d' | sort -u > "$MANIFEST.tmp.$$"
    mv -f "$MANIFEST.tmp.$$" "$MANIFEST"
}

manifest_names() {
    [ -f "$MANIFEST" ] && cat "$MANIFEST" || true
}

# Bundles no link of ours points to, except $1 (kept for in-flight execs).
prune_bundles() {
    keep=$1
    referenced=
    for name in $(manifest_names); do
        case $name in .underlay-*) continue ;; esac
        if is_ours "$name"; then
            referenced="$referenced $(basename "$(dirname "$(readlink "$(installed_path "$name")")")")"
        fi
    done
    remaining=
    for name in $(manifest_names); do
        case $name in
            .underlay-*)
                case " $referenced $keep " in
                    *" $name "*) remaining="$remaining $name" ;;
                    *) rm -rf "${TARGET:?}/$name" ;;
                esac ;;
            *) path=$(installed_path "$name")
               [ -e "$path" ] || [ -L "$path" ] && remaining="$remaining $name" ;;
        esac
    done
    # shellcheck disable=SC2086
    write_manifest $remaining
}

if [ "$UNINSTALL" = 1 ]; then
    [ -f "$MANIFEST" ] || { echo "install: nothing of underlay's in $TARGET"; exit 0; }
    kept=
    for name in $(manifest_names); do
        case $name in .underlay-*) continue ;; esac
        path=$(installed_path "$name")
        if is_ours "$name"; then
            rm -f "$path"
            echo "install: removed $path"
        elif [ -e "$path" ] || [ -L "$path" ]; then
            echo "install: left $path alone (no longer ours)"
        fi
    done
    for name in $(manifest_names); do
        case $name in .underlay-*) rm -rf "${TARGET:?}/$name" ;; esac
    done
    rm -f "$MANIFEST"
    exit 0
fi

[ -x "$FROM/.underlay/$ENTRY" ] || die "no bundle at $FROM/.underlay (run \`make build\` first)"
# Only the CNI plugins go into the CNI bin directory (build.sh lists them from
# cni/registry.py); the agent and the operator's command are not plugins.
PLUGINS=
for link in "$FROM"/*; do
    [ -L "$link" ] && [ "$(readlink "$link")" = ".underlay/$THIN" ] || continue
    grep -qx "$(basename "$link")" "$FROM/.underlay/cni-plugins" 2>/dev/null || continue
    PLUGINS="$PLUGINS $(basename "$link")"
done
[ -n "$PLUGINS" ] || die "no plugin links in $FROM"

mkdir -p "$TARGET"

# Refuse before changing anything.
refused=
for plugin in $PLUGINS; do
    name=$PLUGIN_PREFIX$plugin
    if [ -d "$TARGET/$name" ] && ! is_ours "$name"; then
        die "$TARGET/$name is a directory; not replacing it, even with --force"
    fi
    if { [ -e "$TARGET/$name" ] || [ -L "$TARGET/$name" ]; } && ! is_ours "$name"; then
        if [ "$FORCE" = 1 ]; then
            echo "install: --force: replacing $TARGET/$name, which underlay did not install"
        else
            refused="$refused $name"
        fi
    fi
done
if [ -n "$BIN_DIR" ]; then
    tool=$BIN_DIR/$TOOL
    if { [ -e "$DESTDIR$tool" ] || [ -L "$DESTDIR$tool" ]; } && ! is_ours "$tool"; then
        die "refusing to replace $DESTDIR$tool, which underlay did not install (not even with --force:
  it is no CNI plugin); remove it, or install with another --bin-dir / BIN_DIR="
    fi
fi
if [ -n "$refused" ]; then
    die "refusing to replace files underlay did not install in $TARGET:$refused
  (install under other names with PLUGIN_PREFIX=underlay- / --plugin-prefix underlay-, or replace them with FORCE=1 / --force)"
fi

# The bundle, under a name that changes with its content.
checksum() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-12; else cksum | cut -d' ' -f1; fi
}
id=$(cd "$FROM/.underlay" && find . -type f | LC_ALL=C sort | xargs cat | checksum)
case $id in
    ''|*[!0-9a-f]*) die "could not checksum $FROM/.underlay (sha256sum or cksum, find, sort, xargs, cut)" ;;
esac
bundle=.underlay-$id
if ! [ -x "$TARGET/$bundle/$ENTRY" ] || ! in_manifest "$bundle"; then
    if [ -e "$TARGET/$bundle" ] && ! in_manifest "$bundle"; then
        [ "$FORCE" = 1 ] || die "refusing to replace $TARGET/$bundle, which underlay did not install"
    fi
    rm -rf "$TARGET/$bundle.tmp.$$"
    cp -RPp "$FROM/.underlay" "$TARGET/$bundle.tmp.$$"
    rm -rf "${TARGET:?}/$bundle"
    mv "$TARGET/$bundle.tmp.$$" "$TARGET/$bundle"
fi
# shellcheck disable=SC2046
write_manifest $(manifest_names) "$bundle"

previous=
for plugin in $PLUGINS; do
    name=$PLUGIN_PREFIX$plugin
    if is_ours "$name"; then
        previous=$(dirname "$(readlink "$TARGET/$name")")
    else
        rm -f "$TARGET/$name"    # absent, or --force on someone else's file
    fi
    rm -f "$TARGET/.$name.tmp.$$"
    ln -s "$bundle/$THIN" "$TARGET/.$name.tmp.$$"
    mv -f "$TARGET/.$name.tmp.$$" "$TARGET/$name"
    # shellcheck disable=SC2046
    write_manifest $(manifest_names) "$name"
    echo "install: $TARGET/$name -> $bundle/$THIN"
done

if [ -n "$BIN_DIR" ]; then
    # absolute, without DESTDIR: where the bundle will be once DESTDIR is the root
    mkdir -p "$DESTDIR$BIN_DIR"
    rm -f "$DESTDIR$BIN_DIR/.$TOOL.tmp.$$"
    ln -s "$PREFIX/$bundle/$ENTRY" "$DESTDIR$BIN_DIR/.$TOOL.tmp.$$"
    mv -f "$DESTDIR$BIN_DIR/.$TOOL.tmp.$$" "$DESTDIR$tool"
    # shellcheck disable=SC2046
    write_manifest $(manifest_names) "$tool"
    echo "install: $DESTDIR$tool -> $PREFIX/$bundle/$ENTRY"
fi

prune_bundles "$previous"
