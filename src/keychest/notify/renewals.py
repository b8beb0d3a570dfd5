"""Alerts from what the machines reported about their renewals: a pure decision.

- renewal.failed: the hook reported `status failed` for a domain (certbot's FAILED_DOMAINS):
  "renewal of D failed on NAME at T". Once per report.
- not_deployed: a certificate the hook reported as renewed (with its SHA-256) that no address
  of the domain serves an hour later: "issued on NAME at T, not served by ADDRESS". Once per
  report and address.

Mail gets them as alerts (``decide``), every channel as events (``channel_events``:
``renewal.failed``, ``deployment.not_deployed``) with the same keys and texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from keychest.notify.alerts import Alert
from keychest.notify.events import NOT_DEPLOYED, RENEWAL_FAILED, Event


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


def _failed_key(failure: RenewalFailed) -> str:
    return f"renewal_failed:{failure.report_id}"


def _failed_title(failure: RenewalFailed) -> str:
    return f"Renewal failed: {failure.endpoint}"


def _failed_text(failure: RenewalFailed) -> str:
    return (
        f"renewal of {failure.endpoint} failed on {_machine(failure.host)} at"
        f" {failure.at:%Y-%m-%d %H:%M} UTC. The certificate in use was not replaced: look at"
        " the ACME client's log on that machine (certbot: /var/log/letsencrypt/letsencrypt.log)."
    )


def _undeployed_key(item: NotDeployed) -> str:
    return f"not_deployed:{item.report_id}:{item.ip}"


def _undeployed_title(item: NotDeployed) -> str:
    return f"Renewed certificate not deployed: {item.endpoint} at {item.ip}"


def _undeployed_text(item: NotDeployed) -> str:
    return (
        f"issued on {_machine(item.host)} at {item.at:%Y-%m-%d %H:%M} UTC, not served by {item.ip}"
        f" (SHA-256 {item.sha256[:16]}...). Reload the server there, or copy the new"
        " certificate to it."
    )


def channel_events(failed: Sequence[RenewalFailed], undeployed: Sequence[NotDeployed]) -> list[Event]:
    """Every renewal event true now; the caller leaves out the keys the channel got."""
    events = [
        Event(
            _failed_key(f),
            RENEWAL_FAILED,
            "critical",
            f.endpoint_id,
            f.endpoint,
            None,
            None,
            _failed_title(f),
            _failed_text(f),
            ("renewal_failed",),
        )
        for f in failed
    ]
    events += [
        Event(
            _undeployed_key(u),
            NOT_DEPLOYED,
            "warning",
            u.endpoint_id,
            u.endpoint,
            u.ip,
            None,
            _undeployed_title(u),
            _undeployed_text(u),
            ("not_deployed",),
        )
        for u in undeployed
    ]
    return events


def decide(
    failed: Sequence[RenewalFailed], undeployed: Sequence[NotDeployed], sent: frozenset[str]
) -> list[Alert]:
    alerts: list[Alert] = []
    for failure in failed:
        key = _failed_key(failure)
        if key in sent:
            continue
        alerts.append(
            Alert(
                key,
                "renewal.failed",
                "critical",
                _failed_title(failure),
                _failed_text(failure),
                (failure.endpoint,),
                "renewal failed",
            )
        )
    for item in undeployed:
        key = _undeployed_key(item)
        if key in sent:
            continue
        alerts.append(
            Alert(
                key,
                "not_deployed",
                "warning",
                _undeployed_title(item),
                _undeployed_text(item),
                (item.endpoint,),
                f"renewed certificate not served at {item.ip}",
            )
        )
    return alerts
