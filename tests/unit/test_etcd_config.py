"""ipam.etcd's own checks: endpoint URLs and client_from_config (no etcd needed)."""

import pytest

from cni.errors import ERR_INVALID_CONFIG, CniError
from ipam import etcd


@pytest.mark.parametrize("url, normal", [
    ("http://127.0.0.1:2379", "http://127.0.0.1:2379"),
    ("http://127.0.0.1:2379/", "http://127.0.0.1:2379"),
    ("https://etcd-0.etcd.kube-system.svc:2379", "https://etcd-0.etcd.kube-system.svc:2379"),
    ("http://10.0.0.1", "http://10.0.0.1:2379"),
    ("http://[fd00::1]:2379", "http://[fd00::1]:2379"),
    ("https://[::1]", "https://[::1]:2379"),
])
def test_good_endpoints(url, normal):
    assert etcd.Client([url]).endpoints[0].url == normal


@pytest.mark.parametrize("url", [
    "ftp://x", "127.0.0.1:2379", "http://", "http:///", "http://:2379", "http://host:", "http://host:0",
    "http://host:65536", "http://host:12a", "http://host:2379/v3", "http://host:2379?x=1", "http://host#f",
    "http://user@host:2379", "http://[fd00::1", "http://[nothex]:1", "http://[::1]x", "http://a b",
    "HTTP://host", "http://host:２３７９", "http://hóst", "http://host:1:2", "", "unix:///run/etcd.sock",
])
def test_bad_endpoints_are_code_7_naming_the_field(url):
    with pytest.raises(CniError) as e:
        etcd.client_from_config({"endpoints": ["http://127.0.0.1:2379", url]})
    assert e.value.code == ERR_INVALID_CONFIG
    assert e.value.msg == f"ipam.etcd.endpoints[1]: {url!r} is not an http:// or https:// URL " \
                          "(scheme://host[:port], nothing after it)"


def test_client_field_default_names_etcd():
    with pytest.raises(CniError) as e:
        etcd.Client(["ftp://x"])
    assert e.value.code == ERR_INVALID_CONFIG and e.value.msg.startswith("etcd.endpoints[0]: 'ftp://x'")


@pytest.mark.parametrize("conf, message", [
    ([], "ipam.etcd: must be an object"),
    ({}, "ipam.etcd.endpoints: must be a non-empty list"),
    ({"endpoints": []}, "ipam.etcd.endpoints: must be a non-empty list"),
    ({"endpoints": "http://a:1"}, "ipam.etcd.endpoints: must be a non-empty list"),
    ({"endpoints": [5]}, "ipam.etcd.endpoints[0]: must be a string"),
    ({"endpoints": ["http://a:1"], "prefix": 3}, "ipam.etcd.prefix: must be a string"),
    ({"endpoints": ["http://a:1"], "dialTimeout": 0}, "ipam.etcd.dialTimeout: 0 is not a number of seconds"),
    ({"endpoints": ["http://a:1"], "dialTimeout": "2s"}, "ipam.etcd.dialTimeout: '2s' is not a number"),
    ({"endpoints": ["http://a:1"], "requestTimeout": True}, "ipam.etcd.requestTimeout: True is not"),
    ({"endpoints": ["http://a:1"], "requestTimeout": -1}, "ipam.etcd.requestTimeout: -1 is not"),
    ({"endpoints": ["http://a:1"], "requestTimeout": float("nan")}, "ipam.etcd.requestTimeout: nan is not"),
    ({"endpoints": ["http://a:1"], "requestTimeout": 1e9}, "ipam.etcd.requestTimeout: 1000000000.0 is not"),
    ({"endpoints": ["http://a:1"], "certFile": ""}, "ipam.etcd.certFile: must be a file path"),
    ({"endpoints": ["http://a:1"], "trustedCAFile": 1}, "ipam.etcd.trustedCAFile: must be a file path"),
    ({"endpoints": ["https://a:1"], "keyFile": "/k"}, "ipam.etcd.keyFile: given without certFile"),
    ({"endpoints": ["http://a:1"], "trustedCAFile": "/ca.pem"},
     "ipam.etcd.trustedCAFile: given, but no endpoint is https://"),
    ({"endpoints": ["https://a:1"], "trustedCAFile": "/nonexistent/ca.pem"},
     "ipam.etcd.trustedCAFile: cannot load '/nonexistent/ca.pem'"),
    ({"endpoints": ["https://a:1"], "certFile": "/nonexistent/c.pem", "keyFile": "/nonexistent/k.pem"},
     "ipam.etcd.certFile/keyFile: cannot load '/nonexistent/c.pem' with '/nonexistent/k.pem'"),
])
def test_bad_config_is_code_7_naming_the_field(conf, message):
    with pytest.raises(CniError) as e:
        etcd.client_from_config(conf)
    assert e.value.code == ERR_INVALID_CONFIG
    assert e.value.msg.startswith(message), e.value.msg


def test_defaults_and_field_name():
    client = etcd.client_from_config({"endpoints": ["http://127.0.0.1:2379"], "prefix": "/underlay"})
    assert (client.dial_timeout, client.request_timeout) == (2.0, 5.0)
    client = etcd.client_from_config({"endpoints": ["http://a:1"], "dialTimeout": 0.5, "requestTimeout": 3})
    assert (client.dial_timeout, client.request_timeout) == (0.5, 3.0)
    with pytest.raises(CniError) as e:
        etcd.client_from_config({"endpoints": ["x"]}, field="etcd")
    assert e.value.msg.startswith("etcd.endpoints[0]: 'x'")


def test_keys_and_values_are_str_or_bytes():
    assert etcd.put("k", b"\x00v") == {"request_put": {"key": "aw==", "value": "AHY="}}
    with pytest.raises(TypeError):
        etcd.put("k", 5)
    with pytest.raises(TypeError):
        etcd.absent(None)


def test_prefix_end():
    assert etcd._prefix_end(b"a/") == b"a0"
    assert etcd._prefix_end(b"a\xff") == b"b"
    assert etcd._prefix_end(b"\xff\xff") == b"\0"
    assert etcd._prefix_end("") == b"\0"


def test_http_only_import_leaves_ssl_out():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; from ipam import etcd; etcd.Client(['http://127.0.0.1:1']);"
            "print('ssl' in sys.modules, 'http.client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.split() == ["False", "False"]


def test_host_local_and_macvlan_do_not_import_the_etcd_client():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = "import sys, cni.plugins.macvlan, cni.plugins.ipvlan, ipam.host_local; print('ipam.etcd' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.split() == ["False"]
