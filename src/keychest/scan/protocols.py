"""The protocols a target may name (`smtp://mail.example.net`), their default ports, and
whether TLS starts at once (implicit) or after a plain-text STARTTLS exchange. Pure data.

A plain `host[:port]` is `https`: implicit TLS, as every target was before schemes existed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scheme:
    name: str
    port: int
    starttls: str | None  # the STARTTLS dialect (scan.starttls), None for implicit TLS


DEFAULT_PROTOCOL = "https"

SCHEMES: dict[str, Scheme] = {
    scheme.name: scheme
    for scheme in (
        Scheme("https", 443, None),
        Scheme("smtps", 465, None),
        Scheme("imaps", 993, None),
        Scheme("pop3s", 995, None),
        Scheme("ldaps", 636, None),
        Scheme("smtp", 25, "smtp"),
        Scheme("submission", 587, "smtp"),
        Scheme("imap", 143, "imap"),
        Scheme("pop3", 110, "pop3"),
        Scheme("ldap", 389, "ldap"),
        Scheme("xmpp", 5222, "xmpp"),
        Scheme("xmpp-server", 5269, "xmpp-server"),
        Scheme("postgres", 5432, "postgres"),
        Scheme("mysql", 3306, "mysql"),
        Scheme("ftp", 21, "ftp"),
        Scheme("sieve", 4190, "sieve"),
    )
}


def known_schemes() -> str:
    """The list a user is shown when a scheme is not one of ours."""
    return ", ".join(SCHEMES)
