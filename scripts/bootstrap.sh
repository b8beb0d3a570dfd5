#!/usr/bin/env bash
# Creates .venv and installs keychest into it (with EXTRAS, e.g. "test"), on a fresh Debian 12
# too: there python3 comes without venv/pip until python3-venv is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    # DPkg::Lock::Timeout: wait for another apt/dpkg (unattended-upgrades) instead of failing
    apt-get -o DPkg::Lock::Timeout=600 update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q python3-venv
  else
    echo "bootstrap: python3-venv is missing; run: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.keychest-installed${extras:+-$extras}"
# Reinstall only when the dependency list changed since the last install.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
