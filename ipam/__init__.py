"""IPAM plugins of underlay."""
