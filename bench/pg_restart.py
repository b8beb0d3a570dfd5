"""Restart PostgreSQL under load: processes reconnect and nothing acknowledged is lost.

    .venv/bin/python bench/pg_restart.py [--seconds 40] [--restarts 4]

The shared PostgreSQL on this machine serves other engineers' tests, so this restarts a
PRIVATE cluster: `initdb` into a temporary folder, `pg_ctl start` on a free loopback port
(run as the `postgres` user when we are root, as initdb requires), nothing shared touched.

While it runs: one `keychest serve --role api` and one `--role scanner` (scanner flags
`--scan-interval 1h`, names resolve NXDOMAIN on a loopback DNS server) on that cluster, and
four ledger clients pipelining `add` over the line API. Every few seconds the cluster is
restarted (`pg_ctl restart -m fast`: connections are cut, as in a failover or an upgrade).
Afterwards: every acknowledged name is in the database, both keychest processes are still
running (they reconnected rather than died), and adds succeed again after the last restart.

Exit status 0 when all of that holds; prints a summary either way.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from netutil import free_port  # noqa: E402
from tests.reliability.support import LIMITS_OFF, LedgerClient, RoleProcess, request_key, watched_hosts  # noqa: E402
from tests.support.server import start_server  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivateCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        conf = self.data / "postgresql.conf"
        with conf.open("a") as out:
            out.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 100\n"
            )

    def ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", *args)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--restarts", type=int, default=4)
    args = parser.parse_args()
    if not (PG_BIN / "initdb").exists():
        print(f"no {PG_BIN}/initdb: cannot run a private cluster", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="keychest-pg-"))
    os.chmod(root, 0o755)
    cluster = PrivateCluster(root)
    cluster.init()
    cluster.ctl("start")
    api = scanner = None
    clients: list[LedgerClient] = []
    try:
        api = start_server(root / "api", *LIMITS_OFF, "--role", "api", db_url=cluster.url)
        scanner = RoleProcess(cluster.url, root / "scanner", "scanner", ("--scan-interval", "1h")).start()
        key = request_key(api.line_port)
        clients = [LedgerClient(api.line_port, key, f"c{i}").start() for i in range(4)]
        pause = args.seconds / (args.restarts + 1)
        for n in range(args.restarts):
            time.sleep(pause)
            before = sum(len(c.acknowledged) for c in clients)
            started = time.monotonic()
            cluster.ctl("restart", "-m", "fast")
            print(f"restart {n + 1}: {time.monotonic() - started:.1f}s down; {before} acknowledged so far")
        time.sleep(pause)
        before = sum(len(c.acknowledged) for c in clients)
        time.sleep(3)
        progressing = sum(len(c.acknowledged) for c in clients) > before
        for client in clients:
            client.stop()
        alive = {"api": api.proc is not None and api.proc.poll() is None,
                 "scanner": scanner.proc is not None and scanner.proc.poll() is None}  # fmt: skip
        acknowledged = [name for c in clients for name in c.acknowledged]
        refused = [answer for c in clients for answer in c.refused]
        stored = watched_hosts(cluster.url)
        lost = [name for name in acknowledged if name not in stored]
        scanned = scanner.log().count("scan of")  # failures only; progress lines need a minute
        print(
            f"{args.restarts} restarts; {len(acknowledged)} acknowledged, {len(stored)} stored, "
            f"{len(lost)} lost; {len(refused)} answered 'storage unavailable' "
            f"(e.g. {refused[:1]}); client reconnects {sum(c.connection_errors for c in clients)}; "
            f"processes alive {alive}; adds succeed after the last restart: {progressing}; "
            f"scanner 'lease failed' retries: {scanner.log().count('leasing failed')}; failed scans {scanned}"
        )
        ok = not lost and all(alive.values()) and progressing and len(acknowledged) > 0
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for client in clients:
            client.stop()
        for process in (api, scanner):
            if process is not None:
                process.stop()
        cluster.ctl("stop", "-m", "fast")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
