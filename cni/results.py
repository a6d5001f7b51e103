"""Result versions: the newest (1.1.0) form a plugin builds, and every older form.

A plugin builds
    {"interfaces": [{"name","mac","mtu","sandbox"}], "ips": [{"address","gateway","interface"}],
     "routes": [{"dst","gw","mtu","advmss","priority","table","scope"}], "dns": {...}}
`convert_result` prints it for the caller's cniVersion (0.1.0 ... 1.1.0);
`upconvert_result` reads a result from outside (prevResult, an exec'd IPAM)
back into that form, every value checked before anything is applied.
"""

from cni.contract import version_key
from cni.errors import ERR_DECODE, ERR_INVALID_CONFIG, CniError

ROUTE_FIELDS_1_0 = ("dst", "gw")
INTERFACE_FIELDS_1_0 = ("name", "mac", "sandbox")


def ip_version(address):
    return "6" if ":" in address else "4"


def convert_result(result, version):
    """Newest-form result -> the JSON object for `version`."""
    key = version_key(version)
    if key < (0, 3, 0):
        return _to_020(result, version)
    out = {"cniVersion": version}
    interfaces = result.get("interfaces") or []
    routes = result.get("routes") or []
    ips = [dict(ip) for ip in result.get("ips") or []]
    if key < (1, 1, 0):
        interfaces = [{k: v for k, v in i.items() if k in INTERFACE_FIELDS_1_0} for i in interfaces]
        routes = [{k: v for k, v in r.items() if k in ROUTE_FIELDS_1_0} for r in routes]
    if key < (1, 0, 0):
        for ip in ips:
            ip["version"] = ip_version(ip["address"])
    if interfaces:
        out["interfaces"] = interfaces
    if ips:
        out["ips"] = ips
    if routes:
        out["routes"] = routes
    out["dns"] = result.get("dns") or {}
    return out


def _to_020(result, version):
    out = {"cniVersion": version}
    for ip in result.get("ips") or []:
        family = "ip" + ip_version(ip["address"])
        if family in out:
            continue  # 0.2.0 carries one address per family
        entry = {"ip": ip["address"]}
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        routes = [{k: r[k] for k in ROUTE_FIELDS_1_0 if k in r}
                  for r in result.get("routes") or [] if ip_version(r["dst"]) == family[2]]
        if routes:
            entry["routes"] = routes
        out[family] = entry
    out["dns"] = result.get("dns") or {}
    return out


def upconvert_result(result, version, field="result"):
    """A result in `version`'s form (prevResult, an exec'd IPAM's output) -> newest form."""
    if not isinstance(result, dict):
        raise CniError(ERR_DECODE, f"{field} must be a JSON object")
    try:
        if version_key(version) < (0, 3, 0):
            ips, routes = [], []
            for family in ("ip4", "ip6"):
                entry = result.get(family)
                if entry is None:
                    continue
                if not isinstance(entry, dict) or not isinstance(entry.get("ip"), str):
                    raise CniError(ERR_DECODE, f"{field}.{family} must be an object with an ip string")
                ip = {"address": entry["ip"]}
                if entry.get("gateway"):
                    ip["gateway"] = entry["gateway"]
                ips.append(ip)
                routes.extend(dict(r) for r in objects(entry, "routes", f"{field}.{family}"))
            return check_result_values({"ips": ips, "routes": routes, "dns": dns_of(result, field)}, field)
        ips = []
        for ip in objects(result, "ips", field):
            ip = {k: v for k, v in ip.items() if k != "version"}
            if not isinstance(ip.get("address"), str):
                raise CniError(ERR_DECODE, f"{field}.ips[].address must be a string")
            ips.append(ip)
        return check_result_values({
            "interfaces": [dict(i) for i in objects(result, "interfaces", field)],
            "ips": ips,
            "routes": [dict(r) for r in objects(result, "routes", field)],
            "dns": dns_of(result, field),
        }, field)
    except CniError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise CniError(ERR_DECODE, f"{field} is malformed: {type(e).__name__}: {e}") from None


def objects(result, key, field):
    """result[key], a list of objects (absent or empty: none); code 6 naming it otherwise."""
    value = result.get(key) or []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise CniError(ERR_DECODE, f"{field}.{key} must be a list of objects")
    return value


def dns_of(result, field):
    dns = result.get("dns") or {}
    if not isinstance(dns, dict):
        raise CniError(ERR_DECODE, f"{field}.dns must be an object")
    return dict(dns)


ROUTE_INTS = ("mtu", "advmss", "priority", "table", "scope")


def check_result_values(result, field):
    """A result from outside (prevResult, an exec'd IPAM) is applied to interfaces and routes
    as it is: every address, gateway and route is checked first (code 7 naming it)."""
    import ipaddress

    def bad(where, value, what):
        return CniError(ERR_INVALID_CONFIG, f"{field}.{where}: {value!r} is not {what}")

    def check(parse, where, value, what):
        try:
            if not isinstance(value, str):
                raise ValueError
            parse(value)
        except ValueError:
            raise bad(where, value, what) from None

    def natural(where, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(where, value, "a non-negative integer")

    from cni.config import parse_cidr
    for i, ip in enumerate(result["ips"]):
        check(ipaddress.ip_interface, f"ips[{i}].address", ip["address"], "an address/prefix")
        if "/" not in ip["address"]:
            raise bad(f"ips[{i}].address", ip["address"], "an address/prefix: it has no prefix length")
        if ip.get("gateway") not in (None, ""):
            check(ipaddress.ip_address, f"ips[{i}].gateway", ip["gateway"], "an IP address")
        if "interface" in ip:
            natural(f"ips[{i}].interface", ip["interface"])
    for i, route in enumerate(result["routes"]):
        parse_cidr(route.get("dst"), f"{field}.routes[{i}].dst")
        if route.get("gw") not in (None, ""):
            check(ipaddress.ip_address, f"routes[{i}].gw", route["gw"], "an IP address")
        for key in ROUTE_INTS:
            if route.get(key) is not None:
                natural(f"routes[{i}].{key}", route[key])
    for i, interface in enumerate(result.get("interfaces", [])):
        for key in ("name", "mac", "sandbox"):
            if interface.get(key) is not None and not isinstance(interface[key], str):
                raise bad(f"interfaces[{i}].{key}", interface[key], "a string")
    return result
