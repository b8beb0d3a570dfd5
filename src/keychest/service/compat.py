"""Inputs KeyChest v1.0 clients send that our strict forms refuse, turned into ours.

Pure functions, used by the REST v1.0 routes only: the line API keeps its strict contract.
Each says what it changed, so the answer can tell the client (nothing is silently rewritten).
"""

from __future__ import annotations

import base64
import binascii
import re
import textwrap
from dataclasses import dataclass
from urllib.parse import urlsplit

from keychest.service import errors

# KeyChest turned http:// into https:// and watched the site on 443; https:// means the same
# here. Any other scheme (smtp://, imap://, ...) names another service and goes to the strict
# parser as it is, which knows the protocols and refuses the rest with their list.
SITE_SCHEMES = ("https", "http")


@dataclass(frozen=True)
class UserDomain:
    text: str  # what goes to the strict parser: host[:port]
    changes: tuple[str, ...]  # what was done to the input, one sentence each


def user_domain(given: str) -> UserDomain:
    """KeyChest's servers/add input: a URL's scheme and path dropped, a wildcard's ``*.`` removed."""
    text = given.strip()
    changes: list[str] = []
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in SITE_SCHEMES:
            return UserDomain(text, ())
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise errors.invalid(f"not a usable URL: {exc}") from None
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        text = f"{host}:{port}" if port else host
        changes.append(f"{scheme}:// dropped: the site is watched over TLS on port {port or 443}")
        rest = (
            parts.path
            + (f"?{parts.query}" if parts.query else "")
            + (f"#{parts.fragment}" if parts.fragment else "")
        )
        if rest not in ("", "/"):
            changes.append(f"path {rest[:80]} dropped: certificates belong to the host")
        if parts.username is not None:
            changes.append("user name dropped")
    elif "/" in text:
        host, _, rest = text.partition("/")
        text = host
        changes.append(f"path /{rest[:80]} dropped: certificates belong to the host")
    if text.startswith("*."):
        text = text[2:]
        changes.append(
            f"wildcard *. removed: {text.split(':')[0]} itself is watched (a wildcard has no address)"
        )
    return UserDomain(text, tuple(changes))


_PEM_BEGIN = re.compile(r"-----\s*BEGIN ")


def certificate_pem(given: str) -> tuple[str, bool]:
    """The certificate as PEM, and whether it came as bare base64 DER (KeyChest took that too).

    Text that is not base64 of a DER SEQUENCE is returned unchanged, for the PEM parser to
    say what is wrong with it.
    """
    if _PEM_BEGIN.search(given):
        return given, False
    compact = re.sub(r"\s+", "", given)
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return given, False
    if not der or der[0] != 0x30:
        return given, False
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n", True
