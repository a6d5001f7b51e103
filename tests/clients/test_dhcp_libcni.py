"""The dhcp IPAM through libcni (Debian's, the cnitool driver): a conflist of our macvlan with `dhcp`,
ADD, CHECK, STATUS, GC and DEL against a real Kea4 on the test's LAN (tests/lan.py), the plugins
handing off to the session's underlayd (the dhcp IPAM is served by it alone)."""

import pytest

from tests import netns as nsutil
from tests.lan import kea4, lan, wait_for  # noqa: F401 (fixtures)


@pytest.mark.root
@pytest.mark.clients
@pytest.mark.parametrize("plugin_path", ["agent"], indirect=True)
def test_macvlan_with_dhcp_through_libcni(plugin_path, driver, lan, kea4, pod_ns):
    server = kea4(valid_lifetime=600)
    conflist = {"cniVersion": "1.0.0", "name": "dalibcni",
                "plugins": [{"type": "macvlan", "master": lan.master, "mode": "bridge", "ipam": {"type": "dhcp"}}]}
    net = driver.install(conflist)
    ns = pod_ns()
    netns = nsutil.netns_path(ns)
    added = driver.add(net, netns, container_id="c-dhcp")
    assert added.ok, added
    address = added.json["ips"][0]["address"].split("/")[0]
    assert address in server.leased() and nsutil.addrs(ns, "eth0") == [added.json["ips"][0]["address"]]
    checked = driver.check(net, netns, container_id="c-dhcp")
    assert checked.ok, checked
    collected = driver.gc(net)   # valid attachments: libcni's cache, which holds this one
    assert collected.ok, collected
    assert address in server.leased()
    deleted = driver.delete(net, netns, container_id="c-dhcp")
    assert deleted.ok, deleted
    wait_for(lambda: address not in server.leased(), what="the release seen by the server")
