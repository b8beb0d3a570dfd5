#!/usr/bin/env bash
# install-certbot-test-deps.sh - what the slow certbot hook tests need, installed
# only when missing so that .ci/run can call it every time at little cost:
#   * Debian's certbot (2.1.0 on Debian 12), pebble (ACME test server, driven by
#     tests/hook/pebble.py), shellcheck, and openssl (the hook's optional TLS);
#   * certbot 5.8.0 from PyPI in its own venv (default /opt/certbot-venv), because
#     2.x and 5.x hand hooks different environments and write different logs.
# Environment: CERTBOT_VENV [/opt/certbot-venv], CERTBOT_PYPI_VERSION [5.8.0].
set -euo pipefail

venv=${CERTBOT_VENV:-/opt/certbot-venv}
version=${CERTBOT_PYPI_VERSION:-5.8.0}

missing=()
for pair in certbot:certbot pebble:pebble shellcheck:shellcheck openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "install-certbot-test-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # wait for another apt/dpkg (unattended-upgrades on a fresh machine) instead of failing
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! "$venv/bin/certbot" --version 2>/dev/null | grep -qx "certbot $version"; then
  echo "install-certbot-test-deps: creating $venv with certbot==$version"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "certbot==$version"
fi
certbot --version
"$venv/bin/certbot" --version
