"""Reliability tests: real namespaces, the plugins exec'd many at once, kills."""

import pytest

from tests.reliability.node import Node


@pytest.fixture
def node(data_dir, state_dir):
    """A host netns with a veth master, a dataDir and a stateDir; pods added by the test.
    (A Node, not tests/conftest.py's host_ns: soak.py runs it outside pytest.)"""
    with Node(data_dir, state_dir) as n:
        yield n
