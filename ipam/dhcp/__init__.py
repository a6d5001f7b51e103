"""The dhcp IPAM: DHCPv4/DHCPv6 packets (wire4, wire6), the Lease record (lease) and the
exchanges on sockets in a pod netns (client). The plugin and underlayd's renewer build on these."""
