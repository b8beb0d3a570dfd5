"""The real certbot against a real ACME server, on loopback: pebble (Debian's `pebble`
package) started for one test, and certbot (Debian's 2.x or PyPI's 5.x) pointed at it.

Facts this rests on (checked with pebble 2.4, certbot 2.1.0 and 5.8.0):

- Debian's pebble ships no certificate for its HTTPS listener, so we make a throwaway CA
  and a server certificate for 127.0.0.1/::1/localhost, and certbot trusts that CA through
  REQUESTS_CA_BUNDLE.
- PEBBLE_VA_ALWAYS_VALID=1 accepts every challenge (certbot's standalone server still
  binds its http-01 port), PEBBLE_VA_NOSLEEP=1 drops pebble's random validation delay,
  PEBBLE_WFE_NONCEREJECT=0 stops it refusing 5% of nonces. pebble reuses half of the
  authorizations by default (PEBBLE_AUTHZREUSE), so some names get no challenge line in
  certbot's log; callers may pass PEBBLE_* variables on.
- pebble keeps its accounts in memory: one pebble per certbot state, issue to renew.
- A non-interactive `certbot renew` sleeps up to 8 minutes unless given
  --no-random-sleep-on-renew; pebble's certificates last 5 years, so renewals are forced.
- Both certbot versions append every run to logs/letsencrypt.log, each from a
  "certbot version:" line; hooks in renewal-hooks/ must be executable.

Run by hand (e.g. to capture new log fixtures, see fixtures/capture.py):
    python -m tests.hook.pebble STATE_DIR [CERTBOT]  # starts pebble, prints how to use it, waits
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.net import free_port

DEFAULT_EMAIL = "admin@example.org"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pebble_tls(folder: Path) -> None:
    """ca.pem, cert.pem and key.pem for pebble's HTTPS listener on loopback."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keychest tests: pebble CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(_key_pem(key))


@dataclass
class Pebble:
    """pebble on free loopback ports, and certbot with its config/work/logs under `state`."""

    state: Path
    certbot: str
    email: str | None = DEFAULT_EMAIL
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    pebble: str = "pebble"
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    http01_port: int = field(default_factory=free_port)
    timings: dict[str, float] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def certbot_dir(self) -> Path:
        return self.state / "certbot"

    @property
    def ca_file(self) -> Path:
        return self.state / "tls" / "ca.pem"

    def start(self) -> None:
        for kind in ("pre", "deploy", "post"):
            (self.certbot_dir / "config" / "renewal-hooks" / kind).mkdir(parents=True, exist_ok=True)
        for sub in ("work", "logs"):
            (self.certbot_dir / sub).mkdir(parents=True, exist_ok=True)
        tls = self.state / "tls"
        make_pebble_tls(tls)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(tls / "cert.pem"),
                "privateKey": str(tls / "key.pem"),
                "httpPort": self.http01_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        config_path = self.state / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        env = {k: v for k, v in self.env.items() if k.startswith("PEBBLE_") or k in ("PATH", "HOME")}
        env.update(PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        with (self.state / "pebble.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [self.pebble, "-config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._wait_for_directory()

    def _wait_for_directory(self, timeout: float = 20.0) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError("pebble exited:\n" + (self.state / "pebble.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(self.directory_url, context=context, timeout=2) as answer:
                    json.load(answer)
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pebble did not answer at {self.directory_url}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def run_certbot(
        self, *args: str, check: bool = True, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        """certbot ARGS with this harness's folders, server and CA; `extra_env` for the run."""
        command = [
            self.certbot,
            *args,
            "--config-dir",
            str(self.certbot_dir / "config"),
            "--work-dir",
            str(self.certbot_dir / "work"),
            "--logs-dir",
            str(self.certbot_dir / "logs"),
            "--server",
            self.directory_url,
            "--non-interactive",
        ]
        env = {**self.env, "REQUESTS_CA_BUNDLE": str(self.ca_file), **extra_env}
        start = time.monotonic()
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
        )
        self.timings[args[0]] = time.monotonic() - start
        if check and proc.returncode != 0:
            raise AssertionError(f"{command}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def issue(
        self, *domains: str, extra: tuple[str, ...] = (), email: str | None = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """certonly --standalone for DOMAINS (one certificate); email None: an account without one."""
        address = self.email if email == "" else email
        account = ["-m", address] if address else ["--register-unsafely-without-email"]
        names = [arg for domain in domains for arg in ("-d", domain)]
        return self.run_certbot(
            "certonly",
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            str(self.http01_port),
            "--agree-tos",
            *account,
            *names,
            *extra,
            check=check,
        )

    def renew(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run_certbot("renew", "--force-renewal", "--no-random-sleep-on-renew", *extra, check=check)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("Run by hand")[1], file=sys.stderr)
        return 2
    state = Path(argv[0]).resolve()
    peb = Pebble(state, argv[1] if len(argv) > 1 else "certbot")
    peb.start()
    print(f"pebble at {peb.directory_url} (CA {peb.ca_file}); certbot folders in {peb.certbot_dir}")
    print(f"certbot: REQUESTS_CA_BUNDLE={peb.ca_file} {peb.certbot} ... --server {peb.directory_url} \\")
    folders = peb.certbot_dir
    print(f"  --config-dir {folders}/config --work-dir {folders}/work --logs-dir {folders}/logs")
    print(f"  (certonly --standalone --http-01-address 127.0.0.1 --http-01-port {peb.http01_port})")
    print("Ctrl-C stops pebble.")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        peb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
