"""Reliability tests: real namespaces, the plugins exec'd many at once, kills."""

import pytest

from tests.reliability.node import Node


@pytest.fixture
def node(tmp_path):
    """A host netns with a veth master, a dataDir and a stateDir; pods added by the test."""
    with Node(tmp_path / "networks", tmp_path / "state") as n:
        yield n
