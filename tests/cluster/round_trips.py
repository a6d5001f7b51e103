"""The etcd round trips and writes of one cluster-ipam ADD and DEL, case by case, counted on the
wire (tests/cluster/proxy.py in front of one member, the plugin's only endpoint):
tests/cluster/test_round_trips.py pins them, tests/bench/cluster_bench.py prints them.

`run(command, conf, cid, pod)` runs the plugin once (True: it succeeded); `conf(subnet, node,
name, **ipam)` makes a cluster-ipam config whose etcd is the proxy. Every case runs on etcd as the
cases before it left it, one operation at a time, so the counts are the same on every run.
"""

from tests.cluster.proxy import is_write

POD = ("rt", "pod-1")
CASES = (
    "ADD, the pool's first address (its config written)",
    "ADD, an address in a block the node owns",
    "ADD, a node's first address (a free block claimed)",
    "ADD, an address borrowed from another node's block",
    "ADD, a sticky address taken back",
    "DEL, an address in a block the node owns",
    "DEL, a borrowed address",
    "DEL, sticky (the address held for the pod)",
)


def short(path, body):
    """'r range', 'w txn' ...: a request as one word and whether it is a write."""
    return f"{'w' if is_write(path, body) else 'r'} {path.rsplit('/', 1)[-1]}"


def count(proxy, run, conf):
    """{case: {"round_trips": n, "writes": n, "requests": ["r range", "w txn", ...]}}."""
    counts = {}

    def measured(case, command, config, cid, pod=None):
        del proxy.requests[:]
        if not run(command, config, cid, pod):
            raise AssertionError(f"{case}: cluster-ipam {command} {cid} failed")
        requests = list(proxy.requests)
        counts[case] = {"round_trips": len(requests), "writes": sum(is_write(*r) for r in requests),
                        "requests": [short(*r) for r in requests]}

    a1, a2 = conf("10.47.0.0/24", "n1", "rta", blockSize=28), conf("10.47.0.0/24", "n2", "rta", blockSize=28)
    b1, b2, b3 = (conf("10.48.0.0/27", node, "rtb", blockSize=28) for node in ("n1", "n2", "n3"))
    sticky = conf("10.49.0.0/24", "n1", "rts", blockSize=28, sticky=True)
    measured(CASES[0], "ADD", a1, "c1")
    measured(CASES[1], "ADD", a1, "c2")
    measured(CASES[2], "ADD", a2, "c3")
    run("ADD", b1, "c4", None)                         # n1 and n3 own the pool's two blocks
    run("ADD", b3, "c8", None)
    run("DEL", b2, "c-none", None)                     # n2 has served rtb before (its lock file is there)
    measured(CASES[3], "ADD", b2, "c5")
    run("ADD", sticky, "c6", POD)
    run("DEL", sticky, "c6", POD)                      # the address is now held for the pod
    measured(CASES[4], "ADD", sticky, "c7", POD)
    measured(CASES[5], "DEL", a1, "c2")
    measured(CASES[6], "DEL", b2, "c5")
    measured(CASES[7], "DEL", sticky, "c7", POD)
    return counts


def table(counts):
    lines = [f"  {'case':<56} {'round trips':>11} {'writes':>6}  requests"]
    for case, row in counts.items():
        lines.append(f"  {case:<56} {row['round_trips']:>11} {row['writes']:>6}  {', '.join(row['requests'])}")
    return "\n".join(lines)
