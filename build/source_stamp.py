#!/usr/bin/env python3
"""Print a digest of everything dist/bin is built from.

build/build.sh stores it next to the build (build/work/bin.stamp). With
--check, says whether dist/bin is the build of this checkout: `make build`
skips a fresh build, and the tests that run the executables (tests/bundle.py)
error with "run make build" when it is missing or stale.
"""

import hashlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["cni/**/*.py", "cni/handoff.c", "ipam/**/*.py", "build/entry.py", "build/underlay.spec",
           "build/build.sh", "build/loader/*.py", "pyproject.toml"]
STAMP = ROOT / "build" / "work" / "bin.stamp"
EXE = ROOT / "dist" / "bin" / ".underlay" / "underlay"


def digest():
    h = hashlib.sha256(sys.version.encode())
    paths = sorted({p for pattern in SOURCES for p in ROOT.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts and p.name != "_build.py"})
    for path in paths:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def stale():
    """Why dist/bin is not the build of these sources, or None when it is."""
    if not EXE.is_file():
        return f"{EXE.relative_to(ROOT)} is missing"
    try:
        built = STAMP.read_text().strip()
    except FileNotFoundError:
        return f"{STAMP.relative_to(ROOT)} is missing"
    if built != digest():
        return f"dist/bin is stale (the sources changed since it was built, {STAMP.relative_to(ROOT)})"
    return None


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        problem = stale()
        print(problem or "dist/bin is up to date")
        sys.exit(1 if problem else 0)
    print(digest())
