"""CNI_ARGS parsing: "K=V;K=V", IgnoreUnknown, IP lists, malformed pairs."""

import pytest

from cni.contract import parse_cni_args
from cni.errors import ERR_INVALID_ENV, CniError

K8S = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("IP=10.0.0.5", {"IP": ["10.0.0.5"]}),
    ("IP=10.0.0.5,fd00::5", {"IP": ["10.0.0.5", "fd00::5"]}),
    ("IP= 10.0.0.5 , fd00::5 ,", {"IP": ["10.0.0.5", "fd00::5"]}),
    ("IP=", {"IP": []}),
    ("MAC=02:00:00:00:00:01", {"MAC": "02:00:00:00:00:01"}),
    ("IgnoreUnknown=1;FOO=bar", {"IgnoreUnknown": "1", "FOO": "bar"}),
    ("IgnoreUnknown=true;FOO=bar", {"IgnoreUnknown": "true", "FOO": "bar"}),
    ("IgnoreUnknown=TRUE;FOO=bar", {"IgnoreUnknown": "TRUE", "FOO": "bar"}),
    ("IgnoreUnknown=True;FOO=bar", {"IgnoreUnknown": "True", "FOO": "bar"}),
    ("FOO=bar;IgnoreUnknown=1", {"IgnoreUnknown": "1", "FOO": "bar"}),   # order does not matter
    ("IgnoreUnknown=0", {"IgnoreUnknown": "0"}),
    ("IgnoreUnknown=false;IP=10.0.0.5", {"IgnoreUnknown": "false", "IP": ["10.0.0.5"]}),
    # what every Kubernetes runtime sends: known keys, even without IgnoreUnknown
    (K8S, dict(pair.split("=") for pair in K8S.split(";"))),
    ("IgnoreUnknown=1;" + K8S + ";IP=10.0.0.7",
     dict([pair.split("=") for pair in K8S.split(";")], IgnoreUnknown="1", IP=["10.0.0.7"])),
    ("IP=10.0.0.5;", {"IP": ["10.0.0.5"]}),                # a trailing ';'
    ("IP=10.0.0.5;;MAC=02:00:00:00:00:01", {"IP": ["10.0.0.5"], "MAC": "02:00:00:00:00:01"}),
    ("IgnoreUnknown=1;TOKEN=a=b", {"IgnoreUnknown": "1", "TOKEN": "a=b"}),   # the value is after the first '='
    ("IP=10.0.0.5;IP=10.0.0.6", {"IP": ["10.0.0.6"]}),    # the last one wins
])
def test_parsed(text, expected):
    assert parse_cni_args(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("FOO=bar", "unknown key 'FOO'"),
    ("IgnoreUnknown=0;FOO=bar", "unknown key 'FOO'"),
    ("IgnoreUnknown=false;FOO=bar", "unknown key 'FOO'"),
    ("ip=10.0.0.5", "unknown key 'ip'"),                    # keys are case-sensitive
    ("IgnoreUnknown=yes;FOO=bar", "IgnoreUnknown='yes'"),
    ("IgnoreUnknown=2", "IgnoreUnknown='2'"),
    ("IP", "'IP' is not of the form KEY=VALUE"),
    ("IgnoreUnknown=1;junk", "'junk' is not of the form KEY=VALUE"),
    ("=10.0.0.5", "'=10.0.0.5' is not of the form KEY=VALUE"),
])
def test_refused(text, fragment):
    with pytest.raises(CniError) as e:
        parse_cni_args(text)
    assert e.value.code == ERR_INVALID_ENV
    assert e.value.msg.startswith("CNI_ARGS: ")
    assert fragment in e.value.msg
