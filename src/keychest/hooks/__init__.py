"""The certbot hook, shipped as package data: load it, and render it configured.

The same file stands at `hooks/certbot/keychest-hook.sh` in the repository, where users
look for it; a test keeps the two byte-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

HOOK_FILENAME = "keychest-hook.sh"
DEFAULT_LINE_PORT = 10023

# Values land inside `${KEYCHEST_X:-value}` in a shell script: anything that could end the
# expansion or start another one (`}`, `$`, quotes, backslash, backquote, spaces) is refused.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_EMAIL = re.compile(r"[A-Za-z0-9.!#%&*+/=?^_|~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# curl's --pinnedpubkey form: the base64 SHA-256 of the server's SubjectPublicKeyInfo (DER)
PIN = re.compile(r"sha256//[A-Za-z0-9+/]{43}=")
_PATH = re.compile(r"/[A-Za-z0-9._+,@%/=-]*")


@dataclass(frozen=True)
class HookSettings:
    """What `keychest hook install` writes into the settings block of the hook."""

    host: str
    port: int = DEFAULT_LINE_PORT
    email: str | None = None
    tls: bool = False
    pin: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.pin is not None and not PIN.fullmatch(self.pin):
            raise ValueError(f"not a key pin (sha256//<base64 of 32 bytes>): {self.pin!r}")
        if self.ca_file is not None and not _PATH.fullmatch(self.ca_file):
            raise ValueError(f"not an absolute path the hook can carry: {self.ca_file!r}")
        if not _HOST.fullmatch(self.host):
            raise ValueError(f"not a host name or address: {self.host!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"not a TCP port: {self.port}")
        if self.email is not None and not _EMAIL.fullmatch(self.email):
            raise ValueError(f"not an email address the hook can carry: {self.email!r}")


def parse_server(text: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        return host, int(port) if port else DEFAULT_LINE_PORT
    except ValueError:
        raise ValueError(f"not a port: {port!r}") from None


def hook_text() -> str:
    """The hook exactly as shipped (placeholder settings)."""
    return resources.files(__package__).joinpath(HOOK_FILENAME).read_text(encoding="utf-8")


def _set(text: str, name: str, value: str) -> str:
    pattern = re.compile(rf"^{name}=\$\{{{name}:-[^}}\n]*\}}", re.MULTILINE)
    rendered, count = pattern.subn(lambda _m: f"{name}=${{{name}:-{value}}}", text, count=1)
    if count != 1:
        raise RuntimeError(f"the hook has no {name} setting line")
    return rendered


def render_hook(settings: HookSettings) -> str:
    """The hook with the server (and email, when given) filled into its settings block.

    Environment variables still override them at run time, as in the pristine file.
    """
    text = _set(hook_text(), "KEYCHEST_SERVER", settings.host)
    text = _set(text, "KEYCHEST_PORT", str(settings.port))
    text = _set(text, "KEYCHEST_EMAIL", settings.email or "")
    tls = settings.tls or settings.pin is not None or settings.ca_file is not None
    text = _set(text, "KEYCHEST_TLS", "1" if tls else "0")
    text = _set(text, "KEYCHEST_PIN", settings.pin or "")
    return _set(text, "KEYCHEST_CA_FILE", settings.ca_file or "")
