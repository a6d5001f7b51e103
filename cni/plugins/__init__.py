"""The CNI main plugins (macvlan, ipvlan) and the child-link story they share."""
