"""Kernel VM test harness: runs tests that need ipvlan, 802.1q or dummy links
on a stock Debian kernel under qemu when the host kernel lacks them."""
