#!/bin/sh
# Assembles the build context of conf/image/Containerfile in DIR from a
# `make build` tree (dist/bin), then prints DIR.
#
#   conf/image/context.sh DIR
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:?usage: conf/image/context.sh DIR}
[ -x "$root/dist/bin/.underlay/underlay" ] || { echo "context: no dist/bin (run make build)" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir"
cp "$root/conf/image/Containerfile" "$dir/Containerfile"
cp -RPp "$root/dist/bin" "$dir/bin"
cp -p "$root/build/install.sh" "$dir/install.sh"
cp -p "$root/conf/image/install-cni.sh" "$dir/install-cni.sh"
echo "$dir"
