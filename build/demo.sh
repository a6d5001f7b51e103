#!/usr/bin/env bash
# Demonstration: two pod namespaces attached to one macvlan network through the
# plugins as a runtime execs them, pinging each other; excluded and aux addresses
# are visibly skipped. Everything happens in namespaces made here (never the
# machine's own interfaces) and is removed on exit, even on failure.
#
# Usage: build/demo.sh [BIN_DIR]   (default: dist/bin if built, else the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN_DIR=${1:-}
if [ -z "$BIN_DIR" ] && [ -x dist/bin/macvlan ]; then BIN_DIR=$ROOT/dist/bin; fi

tag=$$
HOST=uldemo-host-$tag
PODS=(uldemo-pod1-$tag uldemo-pod2-$tag)
MASTER=uldm$tag
PEER=uldp$tag
WORK=$(mktemp -d /tmp/underlay-demo.XXXXXX)

cleanup() {
    for ns in "${PODS[@]}" "$HOST"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

plugin() {  # plugin NAME COMMAND CONTAINER POD < config
    local name=$1 command=$2 container=$3 pod=$4
    local exe
    if [ -n "$BIN_DIR" ]; then
        exe=("$BIN_DIR/$name")
    else
        case $name in
            macvlan) exe=("${PYTHON:-python3}" -m cni.plugins.macvlan) ;;
            host-local) exe=("${PYTHON:-python3}" -m ipam.host_local) ;;
        esac
    fi
    ip netns exec "$HOST" env -i PATH="$PATH" PYTHONPATH="$ROOT" CNI_COMMAND="$command" \
        CNI_CONTAINERID="$container" CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 \
        CNI_PATH="${BIN_DIR:-$ROOT}" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$pod" "${exe[@]}"
}

echo "== underlay demo: plugins from ${BIN_DIR:-the checkout (python3 -m ...)}"
ip netns add "$HOST"
ip -n "$HOST" link add "$MASTER" type veth peer name "$PEER"
ip -n "$HOST" link set "$MASTER" up
ip -n "$HOST" link set "$PEER" up
for pod in "${PODS[@]}"; do ip netns add "$pod"; ip -n "$pod" link set lo up; done

cat > "$WORK/net.json" <<EOF
{
  "cniVersion": "1.1.0",
  "name": "demo",
  "type": "macvlan",
  "master": "$MASTER",
  "mode": "bridge",
  "ipam": {
    "type": "host-local",
    "dataDir": "$WORK/ipam",
    "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.1", "rangeEnd": "192.0.2.20",
                 "exclude": ["192.0.2.2-192.0.2.4"]}]],
    "auxAddresses": {"router2": "192.0.2.5"}
  }
}
EOF
echo "== network config (gateway 192.0.2.1; 192.0.2.2-4 excluded; 192.0.2.5 is aux address 'router2'):"
cat "$WORK/net.json"

i=0
for pod in "${PODS[@]}"; do
    i=$((i + 1))
    echo "== ADD pod$i"
    plugin macvlan ADD "demo-c$i" "$pod" < "$WORK/net.json" | tee "$WORK/result$i.json"
    echo
    ip -n "$pod" -br addr show dev eth0
done

ip1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' "$WORK/result1.json")
ip2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' "$WORK/result2.json")
for ip in "$ip1" "$ip2"; do
    case $ip in 192.0.2.1|192.0.2.2|192.0.2.3|192.0.2.4|192.0.2.5)
        echo "FAIL: $ip is the gateway, excluded or aux"; exit 1 ;;
    esac
done
echo "== pod1 ($ip1) and pod2 ($ip2): the gateway, excluded and aux addresses were skipped"
echo "== leases on disk (the reference host-local's format):"
ls "$WORK/ipam/demo"
echo "== the same leases, as the operator's command shows them:"
if [ -n "$BIN_DIR" ]; then
    "$BIN_DIR/underlay" leases --data-dir "$WORK/ipam"
else
    PYTHONPATH="$ROOT" "${PYTHON:-python3}" -m cni.operator leases --data-dir "$WORK/ipam"
fi

echo "== pod1 pings pod2"
ip netns exec "${PODS[0]}" ping -c 2 -W 2 "$ip2"

i=0
for pod in "${PODS[@]}"; do
    i=$((i + 1))
    echo "== DEL pod$i"
    plugin macvlan DEL "demo-c$i" "$pod" < "$WORK/net.json"
done
left=$(ls "$WORK/ipam/demo" | grep -c '^192' || true)
echo "== leases left after DEL: $left"
[ "$left" -eq 0 ]
echo "== demo OK"
