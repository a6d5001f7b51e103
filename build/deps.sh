#!/usr/bin/env bash
# Installs what a fresh machine lacks: Debian packages from build/apt-packages.txt
# and the Python packages of pyproject.toml (with the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=$(grep -v '^\s*#' build/apt-packages.txt | tr '\n' ' ')
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
