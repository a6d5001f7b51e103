"""cluster-access in a burst: 64 pods attached at once (macvlan + cluster-access, primary mode,
dual stack), container IDs that share all but their last characters, then 64 DELs at once:
every node-side name distinct, every pod address routed to its own veth, nothing left after."""

import collections
import concurrent.futures
import json

import pytest

from tests import cluster_lab as lab_
from tests import netns as nsutil
from tests.cluster_lab import SERVICE_CIDRS, access_conf, macvlan_conf, pod_addresses, run_chain

pytestmark = pytest.mark.root
PODS = 64


@pytest.fixture
def lab(tmp_path):
    made = lab_.Lab(tmp_path)
    try:
        yield made.build(cluster=False)
    finally:
        made.close()


def test_64_parallel_adds_and_dels_leave_no_stray_routes_or_names(lab, data_dir, state_dir):
    pods = [lab.netns("cap") for _ in range(PODS)]
    cids = [f"ca{'0' * 60}{i:02x}" for i in range(PODS)]   # one long shared prefix
    chain = [macvlan_conf(lab, data_dir, state_dir), access_conf(serviceCIDRs=SERVICE_CIDRS)]
    node_before = lab_.snapshot(lab.node)

    def run(command, i, prev=None):
        out, result = run_chain(chain, command, lab, pods[i], cids[i], prev=prev)
        assert out.ok, out
        return result

    with concurrent.futures.ThreadPoolExecutor(PODS) as pool:
        results = list(pool.map(lambda i: run("ADD", i), range(PODS)))

    links = {link["ifname"]: link for link in json.loads(lab_.sh("ip", "-j", "link", "show", ns=lab.node).stdout)
             if link["ifname"].startswith("ulca")}
    assert len(links) == PODS
    assert sorted(link["ifalias"].split()[-2] for link in links.values()) == sorted(cids)
    routed = collections.Counter()
    for r in lab_.routes(lab.node):
        if r.get("dev") in links:
            routed[r["dst"]] += 1
    addresses = [a for result in results for v in (4, 6) for a in pod_addresses(result, v)]
    assert len(set(addresses)) == 2 * PODS
    assert routed == collections.Counter(addresses)   # each pod address once, through a veth of ours

    with concurrent.futures.ThreadPoolExecutor(PODS) as pool:
        list(pool.map(lambda i: run("DEL", i, results[i]), range(PODS)))
    assert lab_.snapshot(lab.node) == node_before
    assert all(nsutil.links(pod) == ["lo"] for pod in pods)
