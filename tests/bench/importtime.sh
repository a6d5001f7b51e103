#!/bin/bash
# Start-up import cost of a checkout: the median, over 25 runs, of the total `python -X importtime`
# of the plugin path (macvlan DEL with host-local in-process, no agent: build/entry.py as the bundle runs
# it) and of the thin path (what the entry imports before handing off to underlayd). From source, with
# a private pycache written once. Compare two checkouts by running it on each, alternately:
#   tests/bench/importtime.sh OLD_CHECKOUT; tests/bench/importtime.sh .
set -e
unset PYTHONDONTWRITEBYTECODE   # the private pycache below must be written once, then read
cd "${1:-.}"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
ln -s "$PWD/build/entry.py" $T/macvlan
CONF='{"cniVersion":"1.0.0","name":"it","type":"macvlan","master":"eth0","ipam":{"type":"host-local","subnet":"10.9.0.0/24","dataDir":"'$T'/data"}}'
plugin() { echo "$CONF" | env PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=$T/pyc CNI_COMMAND=DEL CNI_CONTAINERID=c1 CNI_IFNAME=eth0 CNI_PATH=/nonexistent UNDERLAY_SOCKET=$T/none.sock \
  .venv/bin/python -X importtime $T/macvlan 2>&1 >/dev/null | awk -F'|' '/import time:/ && $1 !~ /self/ {sub("import time:","",$1); s+=$1+0} END {print s}'; }
thin() { PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=$T/pyc .venv/bin/python -X importtime -c "$THIN" 2>&1 | awk -F'|' '/import time:/ && $1 !~ /self/ {sub("import time:","",$1); s+=$1+0} END {print s}'; }
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
plugin >/dev/null; plugin >/dev/null   # compile once into the private pycache
THIN=${THIN:-"import cni.registry, cni.handoff"}
echo "plugin path (macvlan DEL + host-local, in-process): $(for i in $(seq 25); do plugin; done | med) us"
echo "thin path ($THIN): $(for i in $(seq 25); do thin; done | med) us"
