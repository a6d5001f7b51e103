"""The import graph of cni/ and ipam/: no circle, not even through an import inside a function,
and no import reaching up a floor (README "Layout").

The layers, bottom up: cni/errors.py (nothing of the project), the contract, results /
oplog / handoff, cni/dispatch.py (the only module that imports those three), the plugins.
A circle used to hide behind lazy imports (contract imported results, oplog and handoff in
functions; they imported contract at the top): moving one lazy import up broke every plugin.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def project_modules():
    """{module name: path} of every module of cni/ and ipam/."""
    found = {}
    for package in ("cni", "ipam"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = project_modules()


def imported(name, top_level_only=False):
    """The project modules `name` imports anywhere in its file (or at its top level only).
    A module's own packages are left out: importing a submodule imports them anyway."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    targets = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            targets |= submodules
            if len(submodules) < len(node.names):
                targets.add(node.module)
    found = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def circles(graph):
    """Every strongly connected set of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_even_through_lazy_imports():
    graph = {name: imported(name) for name in MODULES}
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_errors_imports_nothing_of_the_project():
    assert imported("cni.errors") == set()


def test_only_dispatch_imports_results_oplog_and_handoff():
    """The agent is the other end of handoff's protocol (its constants), and may import it."""
    for low in ("cni.results", "cni.oplog", "cni.handoff"):
        importers = {name for name in MODULES if low in imported(name)}
        if low == "cni.handoff":
            importers = {name for name in importers if name != "cni.agent" and not name.startswith("cni.agent.")}
        assert importers == {"cni.dispatch"}, low


def test_the_contract_is_below_dispatch():
    assert "cni.dispatch" not in imported("cni.contract")
    assert imported("cni.contract") <= {"cni.errors", "cni.spelling"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    """What an executable meets: any module first, no other imported before it."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# The floors of README's layout, bottom up; a module may import from its own floor or below.
FLOORS = [("cni.errors",), ("cni",), ("cni.net",), ("ipam",), ("cni.plugins",), ("cni.agent", "cni.operator")]


def floor_of(module):
    """(floor, the package that places it there): the longest prefix of FLOORS naming it."""
    found = max(((i, p) for i, prefixes in enumerate(FLOORS) for p in prefixes
                 if module == p or module.startswith(p + ".")), key=lambda f: len(f[1]))
    return found


def upward_imports(graph):
    """(importer, imported) pairs that reach a higher floor, or a top-floor neighbour (the agent
    and the operator share what they need from a module below both)."""
    out = []
    for name, targets in sorted(graph.items()):
        here, package = floor_of(name)
        for target in sorted(targets):
            there, other = floor_of(target)
            if there > here or (there == here == len(FLOORS) - 1 and other != package):
                out.append((name, target))
    return out


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward_imports({name: imported(name) for name in MODULES}) == []


def test_the_floor_check_finds_an_upward_import():
    graph = {"cni.net.netlink": {"cni.plugins.macvlan"}, "cni.agent.pools": {"cni.operator.validate"},
             "cni.plugins.macvlan": {"cni.net.netlink", "ipam.ranges", "cni.errors"}}
    assert upward_imports(graph) == [("cni.agent.pools", "cni.operator.validate"),
                                     ("cni.net.netlink", "cni.plugins.macvlan")]
