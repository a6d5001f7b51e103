"""One simulated node that behaves like a runtime: it retries what etcd asked it to retry.

    python -m tests.cluster.sim_runtime CONF.json VERB COUNT CID_PREFIX OUT.json [PROGRESS]

Like tests/cluster/sim_node.py (each operation goes through dispatch.run with
its own environment, so config, etcd client and node lock are built afresh),
but an operation answered with code 11 ("try again later") is handled as
kubelet does: a failed ADD is followed by DEL of that attachment (repeated
until it succeeds) and the ADD is tried again; a failed DEL is repeated. Gives
up after RETRY_FOR seconds per operation. PROGRESS, if given, gets one byte per
finished operation (the test watches it to strike mid-run). OUT.json gets
[{"cid", "code", "out", "seconds", "tries"}, ...]; "failed" lists every
answer that was not 0: [{"cid", "verb", "code", "msg"}].
"""

import io
import json
import sys
import time

from cni import dispatch, registry
from ipam import cluster

RETRY_FOR = 30.0


def once(verb, cid, stdin):
    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/uci-sim", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent", "CNI_ARGS": f"K8S_POD_NAMESPACE=sim;K8S_POD_NAME={cid}"}
    out = io.StringIO()
    code = dispatch.run(registry.EXECUTABLES["cluster-ipam"], cluster.VERBS, env=env, stdin=stdin,
                                stdout=out, stderr=sys.stderr)
    return code, out.getvalue()


def answer_code(out):
    try:
        return json.loads(out).get("code")
    except (ValueError, AttributeError):
        return None


def operate(verb, cid, stdin, failed):
    """(code, out, tries) of `verb` with a runtime's retries."""
    deadline = time.monotonic() + RETRY_FOR
    tries = 0
    while True:
        tries += 1
        code, out = once(verb, cid, stdin)
        if code == 0 or answer_code(out) != 11 or time.monotonic() > deadline:
            return code, out, tries
        failed.append({"cid": cid, "verb": verb, "code": 11, "msg": json.loads(out).get("msg")})
        if verb == "ADD":       # the runtime tears the failed attachment down before trying again
            while once("DEL", cid, stdin)[0] != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.05)


def main():
    conf_path, verb, count, prefix, out_path = sys.argv[1:6]
    progress = open(sys.argv[6], "ab", buffering=0) if len(sys.argv) > 6 else None
    stdin = open(conf_path, "rb").read()
    results, failed = [], []
    for n in range(int(count)):
        cid = f"{prefix}{n}"
        start = time.monotonic()
        code, out, tries = operate(verb, cid, stdin, failed)
        results.append({"cid": cid, "code": code, "out": out, "seconds": time.monotonic() - start, "tries": tries})
        if progress:
            progress.write(b".")
    with open(out_path, "w") as f:
        json.dump({"results": results, "failed": failed}, f)


if __name__ == "__main__":
    main()
