"""Registrable domains from the Public Suffix List, as bundled with `publicsuffixlist` (ICANN
section: `x.github.io` is registered as `github.io`), so nothing is downloaded at run time.

Pure and apart from scan.rdap so that the service (per-domain registration metrics) can name
a registrable domain without importing the scanner's network code.
"""

from __future__ import annotations

import functools
from typing import Any

from keychest.scan.targets import is_ip_literal

# Registration expiry: domain_expires_soon under WARN_DAYS, critical under CRIT_DAYS. Here, not
# in scan.rdap, so that the alert decisions (pure) share the rule without the network code.
DOMAIN_WARN_DAYS = 30
DOMAIN_CRIT_DAYS = 7


@functools.lru_cache(maxsize=1)
def _suffix_list() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)


@functools.lru_cache(maxsize=65536)
def registrable_domain(host: str) -> str | None:
    """`www.example.co.uk` -> `example.co.uk`; None for an address or a public suffix itself."""
    if is_ip_literal(host):
        return None
    found = _suffix_list().privatesuffix(host.rstrip(".").lower())
    return found if isinstance(found, str) else None
