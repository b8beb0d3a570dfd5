#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, the venv, certbot 5.x) and runs the whole
# suite, after the house rules (scripts/lint.sh: ruff, ruff format, import-linter, mypy), which
# fail the run like a failing test. Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`
# for the quick run; KEYCHEST_SKIP_LINT=1 skips the house rules while iterating on one test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # certbot/pebble: hook end-to-end; chromium: dashboard; exim/dovecot/postgresql/mariadb/slapd/vsftpd/prosody: STARTTLS
  # servers the scan tests start on loopback; the rest: scan benchmark peers.
  wanted=(certbot pebble shellcheck chromium openssl curl ssl-cert-check monitoring-plugins-contrib
    exim4-daemon-light dovecot-imapd dovecot-pop3d dovecot-managesieved postgresql-15 mariadb-server-core slapd vsftpd prosody
    faketime  # a scanner with a skewed clock (tests/reliability/test_db_time.py)
    lego dehydrated)  # the hook as their deploy hook, against pebble (tests/hook/test_hook_other_clients.py)
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # wait for another apt/dpkg (unattended-upgrades on a fresh machine) instead of failing
    apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

bash scripts/bootstrap.sh test
if [ -f scripts/install-certbot-test-deps.sh ]; then
  bash scripts/install-certbot-test-deps.sh
fi
if [ -f scripts/install-synapse-test-deps.sh ]; then
  bash scripts/install-synapse-test-deps.sh
fi
if [ "${KEYCHEST_SKIP_LINT:-}" != 1 ]; then
  bash scripts/lint.sh
fi
# Three workers, one test file each at a time (a file's live servers and fixtures stay in one
# process): most tests wait on sockets and child processes, so 2 cores keep 3 busy (the whole
# suite: 18 min in one process, 8 in three). KEYCHEST_TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -n "${KEYCHEST_TEST_WORKERS:-3}" --dist loadfile "$@"
