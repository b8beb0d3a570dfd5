"""Alerts from what the machines reported about their renewals: a pure decision.

- renewal.failed: the hook reported `status failed` for a domain (certbot's FAILED_DOMAINS):
  "renewal of D failed on NAME at T". Once per report.
- not_deployed: a certificate the hook reported as renewed (with its SHA-256) that no address
  of the domain serves an hour later: "issued on NAME at T, not served by ADDRESS". Once per
  report and address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from keychest.notify.alerts import Alert


@dataclass(frozen=True)
class RenewalFailed:
    report_id: int
    endpoint_id: int
    endpoint: str  # host[:port]
    host: str | None  # the machine that reported it
    at: datetime


@dataclass(frozen=True)
class NotDeployed:
    report_id: int
    endpoint_id: int
    endpoint: str
    ip: str
    host: str | None
    at: datetime
    sha256: str


def _machine(host: str | None) -> str:
    return host or "an unnamed machine"


def decide(
    failed: Sequence[RenewalFailed], undeployed: Sequence[NotDeployed], sent: frozenset[str]
) -> list[Alert]:
    alerts: list[Alert] = []
    for failure in failed:
        key = f"renewal_failed:{failure.report_id}"
        if key in sent:
            continue
        alerts.append(
            Alert(
                key,
                "renewal.failed",
                "critical",
                f"Renewal failed: {failure.endpoint}",
                f"renewal of {failure.endpoint} failed on {_machine(failure.host)} at"
                f" {failure.at:%Y-%m-%d %H:%M} UTC. The certificate in use was not replaced: look at"
                " the ACME client's log on that machine (certbot: /var/log/letsencrypt/letsencrypt.log).",
                (failure.endpoint,),
                "renewal failed",
            )
        )
    for item in undeployed:
        key = f"not_deployed:{item.report_id}:{item.ip}"
        if key in sent:
            continue
        alerts.append(
            Alert(
                key,
                "not_deployed",
                "warning",
                f"Renewed certificate not deployed: {item.endpoint} at {item.ip}",
                f"issued on {_machine(item.host)} at {item.at:%Y-%m-%d %H:%M} UTC, not served by {item.ip}"
                f" (SHA-256 {item.sha256[:16]}...). Reload the server there, or copy the new"
                " certificate to it.",
                (item.endpoint,),
                f"renewed certificate not served at {item.ip}",
            )
        )
    return alerts
