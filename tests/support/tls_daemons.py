"""Real STARTTLS servers from Debian for tests, each on a free loopback port with a given
certificate, in a private temp folder, started in the foreground and stopped by PID:

    with dovecot(chain_pem, key_pem) as (imap_port, pop3_port, sieve_port): ...
    with exim(chain_pem, key_pem) as smtp_port: ...
    with postgres_ssl(chain_pem, key_pem) as pg_port: ...
    with mariadb(chain_pem, key_pem) as mysql_port: ...
    with slapd(chain_pem, key_pem) as ldap_port: ...
    with vsftpd(chain_pem, key_pem) as ftp_port: ...
    with prosody(chain_pem, key_pem, "127.0.0.1") as xmpp_port: ...

`missing()` names what is not installed, for a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .net import free_port, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def missing(*programs: str) -> list[str]:
    paths = {
        "dovecot": "/usr/sbin/dovecot",
        "exim": "/usr/sbin/exim4",
        "postgres": str(PG_BIN / "postgres"),
        "mariadb": "/usr/sbin/mariadbd",
        "slapd": "/usr/sbin/slapd",
        "vsftpd": "/usr/sbin/vsftpd",
        "prosody": "/usr/bin/prosody",
    }
    return [name for name in programs if not Path(paths[name]).exists()]


@contextmanager
def _folder() -> Iterator[Path]:
    # The daemons drop privileges (dovenull, Debian-exim, postgres): the folder must be
    # reachable for them, unlike pytest's 0700 tmp_path.
    root = Path(tempfile.mkdtemp(prefix="keychest-daemon-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _write_pair(root: Path, chain_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert, key = root / "cert.pem", root / "key.pem"
    cert.write_bytes(chain_pem)
    key.write_bytes(key_pem)
    cert.chmod(0o644)
    key.chmod(0o644)
    return cert, key


@contextmanager
def _running(command: list[str], port: int, log: Path, user: str | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, user=user)
    try:
        try:
            wait_for_port(port, timeout=20)
        except TimeoutError:
            raise RuntimeError(
                f"{command[0]} did not start: {log.read_text(errors='replace')[-2000:]}"
            ) from None
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def dovecot(chain_pem: bytes, key_pem: bytes) -> Iterator[tuple[int, int, int]]:
    """Dovecot with IMAP (STARTTLS), POP3 (STLS) and, when dovecot-managesieved is installed,
    ManageSieve (STARTTLS) on 127.0.0.1: yields the (imap, pop3, sieve or 0) ports."""
    with _folder() as root:
        cert, key = _write_pair(root, chain_pem, key_pem)
        imap, pop3 = free_port(), free_port()
        sieve = free_port() if Path("/usr/lib/dovecot/managesieve-login").exists() else 0
        sieve_service = (
            f"""service managesieve-login {{
  inet_listener sieve {{
    port = {sieve}
  }}
}}
"""
            if sieve
            else ""
        )
        for sub in ("run", "state"):
            (root / sub).mkdir()
        config = root / "dovecot.conf"
        config.write_text(
            f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3{" sieve" if sieve else ""}
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain
passdb {{
  driver = static
  args = password=unused
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{sieve_service}"""
        )
        with _running(["/usr/sbin/dovecot", "-F", "-c", str(config)], imap, root / "out.log"):
            wait_for_port(pop3)
            if sieve:
                wait_for_port(sieve)
            yield imap, pop3, sieve


@contextmanager
def exim(chain_pem: bytes, key_pem: bytes) -> Iterator[int]:
    """Exim (exim4-daemon-light) offering STARTTLS on 127.0.0.1: yields the SMTP port."""
    with _folder() as root:
        cert, key = _write_pair(root, chain_pem, key_pem)
        port = free_port()
        spool = root / "spool"
        spool.mkdir()
        user = pwd.getpwnam("Debian-exim")
        os.chown(spool, user.pw_uid, user.pw_gid)
        config = root / "exim.conf"
        # Exim takes -C only from a root-owned file nobody else may write.
        config.write_text(
            f"""primary_hostname = mail.test
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
tls_advertise_hosts = *
tls_certificate = {cert}
tls_privatekey = {key}
spool_directory = {spool}
log_file_path = {spool}/%slog
pid_file_path = {spool}/exim.pid
begin routers
begin transports
"""
        )
        config.chmod(0o644)
        with _running(
            ["/usr/sbin/exim4", "-C", str(config), "-bdf", "-oX", str(port)], port, root / "out.log"
        ):
            yield port


@contextmanager
def postgres_ssl(chain_pem: bytes, key_pem: bytes, ssl: bool = True) -> Iterator[int]:
    """A private PostgreSQL cluster (initdb in a temp folder) with `ssl = on`: yields its port."""
    with _folder() as root:
        as_root = os.geteuid() == 0
        user = "postgres" if as_root else None
        owner = pwd.getpwnam("postgres") if as_root else None
        cert, key = _write_pair(root, chain_pem, key_pem)
        key.chmod(0o600)
        data = root / "data"
        if owner is not None:
            for path in (root, cert, key):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=user,
        )
        port = free_port()
        command = [
            str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
            "-c", f"ssl={'on' if ssl else 'off'}", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}",
        ]  # fmt: skip
        with _running(command, port, root / "pg.log", user=user):
            yield port


@contextmanager
def mariadb(chain_pem: bytes, key_pem: bytes) -> Iterator[int]:
    """MariaDB with TLS (a fresh data directory from mariadb-install-db): yields its port."""
    with _folder() as root:
        cert, key = _write_pair(root, chain_pem, key_pem)
        data = root / "data"
        as_root = os.geteuid() == 0
        user = ["--user=mysql"] if as_root else []
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", *user, "--skip-test-db"],
            check=True,
            capture_output=True,
        )
        port = free_port()
        command = [
            "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", *user, f"--port={port}",
            "--bind-address=127.0.0.1", f"--socket={data}/sock", f"--pid-file={data}/pid",
            f"--ssl-cert={cert}", f"--ssl-key={key}", "--skip-grant-tables",
        ]  # fmt: skip
        with _running(command, port, root / "mariadb.log"):
            yield port


@contextmanager
def slapd(chain_pem: bytes, key_pem: bytes) -> Iterator[int]:
    """OpenLDAP's slapd with StartTLS and no database (the root DSE is all a scan needs)."""
    with _folder() as root:
        cert, key = _write_pair(root, chain_pem, key_pem)
        port = free_port()
        config = root / "slapd.conf"
        config.write_text(
            f"""include /etc/ldap/schema/core.schema
pidfile {root}/slapd.pid
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
"""
        )
        command = ["/usr/sbin/slapd", "-d", "0", "-h", f"ldap://127.0.0.1:{port}/", "-f", str(config)]
        with _running(command, port, root / "slapd.log"):
            yield port


@contextmanager
def vsftpd(chain_pem: bytes, key_pem: bytes, *, anonymous: bool = True) -> Iterator[int]:
    """vsftpd with AUTH TLS (anonymous only, an empty root): yields its port. Without
    `anonymous` it has no way in at all and refuses every session (500 OOPS)."""
    with _folder() as root:
        cert, key = _write_pair(root, chain_pem, key_pem)
        empty = root / "empty"
        empty.mkdir()
        empty.chmod(0o555)
        port = free_port()
        config = root / "vsftpd.conf"
        config.write_text(
            f"""listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
ssl_enable=YES
rsa_cert_file={cert}
rsa_private_key_file={key}
secure_chroot_dir={empty}
anonymous_enable={"YES" if anonymous else "NO"}
anon_root={empty}
allow_anon_ssl=YES
local_enable=NO
"""
        )
        with _running(["/usr/sbin/vsftpd", str(config)], port, root / "vsftpd.log"):
            yield port


@contextmanager
def prosody(chain_pem: bytes, key_pem: bytes, host: str) -> Iterator[int]:
    """Prosody (XMPP) with STARTTLS for the virtual host `host`: yields its c2s port."""
    with _folder() as root:
        cert, key = _write_pair(root, chain_pem, key_pem)
        (root / "data").mkdir()
        port = free_port()
        config = root / "prosody.cfg.lua"
        config.write_text(
            f"""pidfile = "{root}/prosody.pid"
daemonize = false
run_as_root = true
data_path = "{root}/data"
certificates = "{root}"
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
log = {{ {{ levels = {{ min = "error" }}, to = "console" }} }}
modules_enabled = {{ "tls" }}
VirtualHost "{host}"
  ssl = {{ certificate = "{cert}", key = "{key}" }}
"""
        )
        with _running(["/usr/bin/prosody", "--config", str(config)], port, root / "prosody.log"):
            yield port
