"""One simulated node: run cluster-ipam `count` times in this process, as a runtime would exec it.

    python -m tests.cluster.sim_node CONF.json VERB COUNT CID_PREFIX OUT.json

Each operation goes through dispatch.run with its own CNI_* environment and
stdin, so it builds its config, etcd client and node lock afresh, as an exec
does; only the interpreter start-up is saved. OUT.json gets
[{"cid", "code", "out", "seconds"}, ...].
"""

import io
import json
import sys
import time

from cni import dispatch, registry
from ipam import cluster


def main():
    conf_path, verb, count, prefix, out_path = sys.argv[1:]
    stdin = open(conf_path, "rb").read()
    results = []
    for n in range(int(count)):
        cid = f"{prefix}{n}"
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/ucl-sim", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/nonexistent", "CNI_ARGS": f"K8S_POD_NAMESPACE=sim;K8S_POD_NAME={cid}"}
        out = io.StringIO()
        start = time.monotonic()
        code = dispatch.run(registry.EXECUTABLES["cluster-ipam"], cluster.VERBS, env=env, stdin=stdin,
                                    stdout=out, stderr=sys.stderr)
        results.append({"cid": cid, "code": code, "out": out.getvalue(), "seconds": time.monotonic() - start})
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
