#!/usr/bin/env bash
# install-synapse-test-deps.sh - the Matrix homeserver that the slow Matrix channel test
# (tests/notify/test_matrix_e2e.py) starts on loopback: Synapse from PyPI in its own venv
# (default /opt/synapse-venv), because it pins many packages that must not meet the
# project's .venv. Installed only when missing, so scripts/test.sh can call it every time.
# Environment: SYNAPSE_VENV [/opt/synapse-venv], SYNAPSE_PYPI_VERSION [1.163.2].
set -euo pipefail

venv=${SYNAPSE_VENV:-/opt/synapse-venv}
version=${SYNAPSE_PYPI_VERSION:-1.163.2}

installed() {
  "$venv/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null
}

if [ "$(installed)" != "$version" ]; then
  echo "install-synapse-test-deps: creating $venv with matrix-synapse==$version"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "matrix-synapse==$version"
fi
echo "synapse $(installed)"
