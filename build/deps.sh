#!/usr/bin/env bash
# Installs what a fresh machine lacks: the Debian packages of build/apt-packages.txt,
# then the Python packages of pyproject.toml (with the dev extra) into .venv, a
# virtual environment owned by this checkout. Nothing is installed into any system
# Python: a stock Debian 12's python3 is externally managed (PEP 668) and refuses pip.
#
# .venv is made from Debian's /usr/bin/python3 (python3-venv) when there is one, else
# from the python3 on PATH (VENV_PYTHON overrides); pip runs again only when
# pyproject.toml changed since the last install (.venv/.installed holds its digest).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=$(grep -v '^\s*#' build/apt-packages.txt | tr '\n' ' ')
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

base=${VENV_PYTHON:-}
if [ -z "$base" ]; then
    if [ -x /usr/bin/python3 ]; then base=/usr/bin/python3; else base=$(command -v python3); fi
fi
if ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    rm -rf .venv
    "$base" -m venv .venv
fi
digest="$(sha256sum pyproject.toml | cut -d' ' -f1) $(readlink -f .venv/bin/python)"
if [ "$(cat .venv/.installed 2>/dev/null)" != "$digest" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$digest" > .venv/.installed
fi
