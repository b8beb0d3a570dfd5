"""Which events a channel gets: a pure function of what the scanner saw, the time, and what the
channel already got. No I/O; ``now`` is passed in.

Every event has a key; the caller stores the keys a channel got (``channel_events``, unique per
channel) and passes them back in, so a rescan or a restart sends nothing twice. Some events
open an incident (``certificate.invalid``, ``endpoint.failing``): it stays open until the
condition is gone, and then the channel gets the closing event (``certificate.valid``,
``endpoint.recovered``). An incident replaced by another of the same type on the same address
(say warning -> critical, or other problem codes) is closed without a closing event: the new
one says what is true now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from keychest.notify.alerts import DOMAIN_PROBLEMS, ISSUER_CHANGE_WINDOW, Policy, domain_notices, thresholds
from keychest.notify.facts import CertChange, CertInfo, EndpointFacts, days, describe_left
from keychest.scan.judge import Severity, expiry_severity

EXPIRING = "certificate.expiring"
EXPIRED = "certificate.expired"
RENEWED = "certificate.renewed"
RENEWAL_OVERDUE = "certificate.renewal_overdue"
STALE = "deployment.stale"
FAILING = "endpoint.failing"
RECOVERED = "endpoint.recovered"
INVALID = "certificate.invalid"
VALID = "certificate.valid"
TEST = "notification.test"
# From the machines' renewal reports (notify.renewals): once per report (and address).
RENEWAL_FAILED = "renewal.failed"
NOT_DEPLOYED = "deployment.not_deployed"
# The registrable domain's registration (RDAP), not a certificate: once per domain, code,
# severity and expiry date, naming the first of the channel's endpoints under it.
DOMAIN_EXPIRING = "domain.expiring"
DOMAIN_EXPIRED = "domain.expired"

EVENT_TYPES = (
    EXPIRING, EXPIRED, RENEWED, RENEWAL_OVERDUE, STALE, FAILING, RECOVERED, INVALID, VALID,
    RENEWAL_FAILED, NOT_DEPLOYED, DOMAIN_EXPIRING, DOMAIN_EXPIRED, TEST,
)  # fmt: skip
# The incident an event opens, and the event that closes it.
CLOSES = {FAILING: RECOVERED, INVALID: VALID}
# The same incidents as mailed (notify.alerts kinds), under the names channels use.
MAIL_INCIDENTS = {"invalid": INVALID, "down": FAILING}
SEVERITIES = ("info", "warning", "critical")
ACME_MAX_LIFETIME = timedelta(days=100)
# Problem codes that have events of their own (expiry, stale deployment, domain registration):
# not "invalid".
OWN_EVENTS = frozenset({"expired", "expires_soon", "stale_deployment"}) | DOMAIN_PROBLEMS


@dataclass(frozen=True)
class Event:
    key: str
    type: str
    severity: str  # info, warning, critical
    endpoint_id: int | None
    endpoint: str  # host[:port] as registered
    ip: str | None
    certificate: CertInfo | None
    title: str  # one line: host and what happened
    message: str
    problems: tuple[str, ...] = ()
    # The key of the incident this event closes (certificate.valid, endpoint.recovered).
    closes: str | None = None
    # Sent before: an open incident repeated (--renotify), not a new one.
    repeat: bool = False


@dataclass(frozen=True)
class OpenIncident:
    key: str
    type: str
    endpoint_id: int | None
    ip: str | None


@dataclass(frozen=True)
class Filter:
    """A channel's choice: the least severity of problem events, and the types (empty: all).
    Closing and ``info`` events pass the severity bar: they follow what the channel was told."""

    min_severity: str = "warning"
    types: frozenset[str] = field(default_factory=frozenset)

    def wants(self, event: Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        if event.severity == "info" or event.closes is not None:
            return True
        return SEVERITIES.index(event.severity) >= SEVERITIES.index(self.min_severity)


@dataclass(frozen=True)
class Hold:
    """A snooze or maintenance window on a server: while active, its events wait."""

    starts_at: datetime
    ends_at: datetime
    weekly: bool = False  # the same span again every week after starts_at

    def active(self, now: datetime) -> bool:
        if now < self.starts_at:
            return False
        if not self.weekly:
            return now < self.ends_at
        return (now - self.starts_at) % WEEK < self.ends_at - self.starts_at


WEEK = timedelta(days=7)
DEFAULT_POLICY = Policy()
ALL = Filter()


@dataclass(frozen=True)
class Decision:
    events: list[Event]
    # Incidents to close without an event: replaced by another, or their endpoint is gone.
    closed_quietly: list[str]


def _severity(cert: CertInfo, now: datetime, policy: Policy) -> str:
    found = expiry_severity(cert.not_after, now, policy.warn_days, policy.crit_days)
    return "critical" if found == Severity.CRITICAL else "warning"


def _expiring_sent(sent: frozenset[str], prefix: str) -> list[int]:
    found = []
    for key in sent:
        if key.startswith(prefix):
            try:
                found.append(int(key[len(prefix) :]))
            except ValueError:
                continue
    return found


def _at(ip: str | None) -> str:
    return f" at {ip}" if ip else ""


def current(
    endpoints: Sequence[EndpointFacts],
    changes: Sequence[CertChange],
    now: datetime,
    sent: frozenset[str],
    policy: Policy = DEFAULT_POLICY,
) -> list[Event]:
    """Every event true now that the channel has not had, most urgent first."""
    fresh = [e for e in _true(endpoints, changes, now, sent, policy) if e.key not in sent]
    fresh.sort(key=lambda e: (-SEVERITIES.index(e.severity), e.type, e.title))
    return fresh


def _true(
    endpoints: Sequence[EndpointFacts],
    changes: Sequence[CertChange],
    now: datetime,
    sent: frozenset[str],
    policy: Policy,
) -> list[Event]:
    """Every event true now, sent or not (an expiry threshold only while no tighter one was sent)."""
    events: list[Event] = []
    for endpoint in endpoints:
        certs_seen: set[int] = set()
        for address in endpoint.addresses:
            ip = address.ip or None
            if address.error_kind is not None:
                if address.error_since is None or now - address.error_since < policy.down_grace:
                    continue
                events.append(
                    Event(
                        f"failing:{endpoint.id}:{address.ip}:{address.error_since.isoformat()}",
                        FAILING,
                        "critical",
                        endpoint.id,
                        endpoint.name,
                        ip,
                        None,
                        f"{endpoint.name}{_at(ip)} unreachable",
                        f"{endpoint.name}{_at(ip)} has failed every scan since "
                        f"{address.error_since:%Y-%m-%d %H:%M} UTC: {address.error or address.error_kind}.",
                        (address.error_kind,),
                    )
                )
                continue
            cert = address.certificate
            if cert is None:
                continue
            invalid = tuple(sorted(p for p in address.problems if p not in OWN_EVENTS))
            if invalid and address.state in ("warning", "critical"):
                events.append(
                    Event(
                        f"invalid:{endpoint.id}:{address.ip}:{cert.id}:{address.state}:{','.join(invalid)}",
                        INVALID,
                        address.state,
                        endpoint.id,
                        endpoint.name,
                        ip,
                        cert,
                        f"{endpoint.name}{_at(ip)} certificate invalid: {', '.join(invalid)}",
                        f"The scanner found {', '.join(invalid)} on the certificate from {cert.issuer} "
                        f"served by {endpoint.name}{_at(ip)}.",
                        invalid,
                    )
                )
            if "stale_deployment" in address.problems:
                events.append(
                    Event(
                        f"stale:{endpoint.id}:{address.ip}:{cert.id}",
                        STALE,
                        _severity(cert, now, policy),
                        endpoint.id,
                        endpoint.name,
                        ip,
                        cert,
                        f"{endpoint.name}{_at(ip)} serves an old certificate",
                        f"{address.ip} serves an older certificate (expiring {cert.not_after:%Y-%m-%d}) than "
                        f"the other addresses of {endpoint.name}: the renewal did not reach it.",
                        ("stale_deployment",),
                    )
                )
            if cert.id in certs_seen:
                continue
            certs_seen.add(cert.id)
            events.extend(_expiry(endpoint, ip, cert, now, sent, policy))
    for notice in domain_notices(endpoints, now):
        first = min(notice.endpoints, key=lambda e: e.name)
        events.append(
            Event(
                notice.key,
                DOMAIN_EXPIRED if notice.code == "domain_expired" else DOMAIN_EXPIRING,
                notice.severity,
                first.id,
                first.name,
                None,
                None,
                notice.title,
                notice.detail,
                (notice.code,),
            )
        )
    for change in changes:
        if change.old is None or now - change.at > ISSUER_CHANGE_WINDOW:
            continue
        events.append(
            Event(
                f"renewed:{change.id}",
                RENEWED,
                "info",
                change.endpoint_id,
                change.endpoint,
                change.ip or None,
                change.new,
                f"{change.endpoint}{_at(change.ip or None)} serves a new certificate",
                f"On {change.at:%Y-%m-%d %H:%M} UTC {change.endpoint}{_at(change.ip or None)} started "
                f"serving a certificate from {change.new.issuer}, valid until "
                f"{change.new.not_after:%Y-%m-%d}.",
            )
        )
    return events


def _expiry(
    endpoint: EndpointFacts,
    ip: str | None,
    cert: CertInfo,
    now: datetime,
    sent: frozenset[str],
    policy: Policy,
) -> list[Event]:
    left = cert.left(now)
    if left <= timedelta(0):
        return [
            Event(
                f"expired:{endpoint.id}:{cert.id}",
                EXPIRED,
                "critical",
                endpoint.id,
                endpoint.name,
                ip,
                cert,
                f"{endpoint.name} certificate expired",
                f"The certificate from {cert.issuer} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC and is "
                "still being served.",
                ("expired",),
            )
        ]
    out = []
    crossed = [t for t in thresholds(cert, policy) if left <= t]
    if crossed:
        tightest_s = int(min(crossed).total_seconds())
        prefix = f"expiring:{endpoint.id}:{cert.id}:"
        if not any(s <= tightest_s for s in _expiring_sent(sent, prefix)):
            out.append(
                Event(
                    f"{prefix}{tightest_s}",
                    EXPIRING,
                    _severity(cert, now, policy),
                    endpoint.id,
                    endpoint.name,
                    ip,
                    cert,
                    f"{endpoint.name} certificate expires in {describe_left(left)}",
                    f"The certificate from {cert.issuer} expires on {cert.not_after:%Y-%m-%d %H:%M} UTC "
                    f"({describe_left(left)} from now).",
                    ("expires_soon",),
                )
            )
    acme = cert.is_lets_encrypt or cert.lifetime <= ACME_MAX_LIFETIME
    newer = any(other.not_before > cert.not_before for other in endpoint.certificates)
    if acme and left < cert.lifetime / 3 and not newer:
        out.append(
            Event(
                f"renewal_overdue:{endpoint.id}:{cert.id}",
                RENEWAL_OVERDUE,
                _severity(cert, now, policy),
                endpoint.id,
                endpoint.name,
                ip,
                cert,
                f"{endpoint.name} renewal overdue",
                f"The certificate from {cert.issuer} has {describe_left(left)} of its "
                f"{round(days(cert.lifetime))}-day lifetime left and no newer one is served.",
                ("renewal_overdue",),
            )
        )
    return out


def decide(
    endpoints: Sequence[EndpointFacts],
    changes: Sequence[CertChange],
    now: datetime,
    sent: frozenset[str],
    open_incidents: Mapping[str, OpenIncident],
    channel: Filter = ALL,
    policy: Policy = DEFAULT_POLICY,
    repeat: frozenset[str] = frozenset(),
) -> Decision:
    """The events to send one channel now, and the incidents to close without one.

    ``repeat``: open incidents due to be sent again (unacknowledged, critical, --renotify
    elapsed); each still true is sent again as it is now, marked ``repeat``."""
    true_events = _true(endpoints, changes, now, sent, policy)
    true_keys = {e.key for e in true_events}
    again = [replace(e, repeat=True) for e in true_events if e.key in repeat and e.key in open_incidents]
    new = [e for e in current(endpoints, changes, now, sent, policy) if channel.wants(e)]
    by_id = {e.id: e for e in endpoints}
    opening = {(e.type, e.endpoint_id, e.ip) for e in new if e.type in CLOSES}
    events: list[Event] = []
    quiet: list[str] = []
    for incident in open_incidents.values():
        if incident.key in true_keys:
            continue
        endpoint = by_id.get(incident.endpoint_id) if incident.endpoint_id is not None else None
        if endpoint is None or (incident.type, incident.endpoint_id, incident.ip) in opening:
            quiet.append(incident.key)
            continue
        closing = CLOSES.get(incident.type)
        if closing is None:
            quiet.append(incident.key)
            continue
        where = f"{endpoint.name}{_at(incident.ip)}"
        text = "is reachable again" if closing == RECOVERED else "serves a valid certificate again"
        events.append(
            Event(
                f"closed:{incident.key}",
                closing,
                "info",
                endpoint.id,
                endpoint.name,
                incident.ip,
                _served(endpoint, incident.ip),
                f"{where} {text}",
                f"The incident opened for {where} is over: it {text}.",
                closes=incident.key,
            )
        )
    return Decision([e for e in events if channel.wants(e)] + new + again, quiet)


def _served(endpoint: EndpointFacts, ip: str | None) -> CertInfo | None:
    for address in endpoint.addresses:
        if (address.ip or None) == ip and address.certificate is not None:
            return address.certificate
    return None
