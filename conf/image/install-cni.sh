#!/bin/sh
# Entry point of the installer image (conf/image/Containerfile).
#
#   install-cni.sh            install once and exit (the DaemonSet's init container)
#   install-cni.sh --sleep    install, then stay up (single-container DaemonSets)
#   install-cni.sh --idle     only stay up (the DaemonSet's main container, so the pod
#                             stays Running and a new image rolls out as a new pod)
#
# Environment:
#   CNI_BIN_DIR    the node's CNI bin dir as mounted here (default /host/opt/cni/bin)
#   PLUGIN_PREFIX  install as <prefix>macvlan etc. (default: none)
#   FORCE          1: replace files underlay did not install (the reference plugins)
#   UNDERLAY_SRC   the plugins in this image (default /underlay/bin)
set -eu

CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
UNDERLAY_SRC=${UNDERLAY_SRC:-/underlay/bin}
PLUGIN_PREFIX=${PLUGIN_PREFIX:-}
FORCE=${FORCE:-0}
here=$(dirname "$0")
mode=${1:-}

idle() {
    trap 'exit 0' TERM INT
    while :; do sleep 3600 & wait $!; done
}

case $mode in
    --idle) idle ;;
    ""|--sleep) ;;
    *) echo "install-cni: unknown argument: $mode" >&2; exit 2 ;;
esac

[ -d "$CNI_BIN_DIR" ] || { echo "install-cni: $CNI_BIN_DIR is not mounted" >&2; exit 1; }
set -- --from "$UNDERLAY_SRC" --prefix "$CNI_BIN_DIR" --plugin-prefix "$PLUGIN_PREFIX"
case $FORCE in 1|yes|true) set -- "$@" --force ;; esac
sh "$here/install.sh" "$@"

[ "$mode" != --sleep ] || idle
