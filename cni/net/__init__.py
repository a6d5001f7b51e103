"""The kernel side: rtnetlink, network namespaces, links, VLAN parents, the host shim, kernel probes."""
