"""Hostile-input tests: counts of the cases each test ran, summed in the terminal summary.

A test reports with `record_property("cases", n)` (and a label); pytest-xdist
carries the properties back to the controller, which prints the totals.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/hostile/" in str(item.fspath):
            item.add_marker(pytest.mark.root)


def pytest_terminal_summary(terminalreporter):
    totals = {}
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        if report.when != "call":
            continue
        props = dict(report.user_properties)
        if "cases" in props:
            label = props.get("label", report.nodeid.split("::")[-1])
            totals[label] = totals.get(label, 0) + props["cases"]
    figures = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        figures += [(k[len("figure:"):], v) for k, v in report.user_properties if str(k).startswith("figure:")]
    if figures:
        terminalreporter.section("hostile input: huge inputs (host-local exec, wall time and peak RSS)")
        for label, value in figures:
            terminalreporter.write_line(f"{value:>24}  {label}")
    if totals:
        terminalreporter.section("hostile input: cases run")
        for label, n in sorted(totals.items()):
            terminalreporter.write_line(f"{n:>8}  {label}")
        terminalreporter.write_line(f"{sum(totals.values()):>8}  total")


@pytest.fixture
def count_cases(record_property):
    """count_cases(label, n): report n cases under label."""
    def record(label, n):
        record_property("label", label)
        record_property("cases", n)
    return record


@pytest.fixture(autouse=True)
def _keep_umask():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
