#!/usr/bin/env python3
"""Print a digest of everything dist/bin is built from.

build/build.sh stores it next to the build (build/work/bin.stamp); the tests
in tests/build rebuild only when the digest of the checkout differs.
"""

import hashlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["cni/**/*.py", "cni/handoff.c", "ipam/**/*.py", "build/entry.py", "build/underlay.spec",
           "build/build.sh", "build/loader/*.py", "pyproject.toml"]


def digest():
    h = hashlib.sha256(sys.version.encode())
    paths = sorted({p for pattern in SOURCES for p in ROOT.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts and p.name != "_build.py"})
    for path in paths:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


if __name__ == "__main__":
    print(digest())
