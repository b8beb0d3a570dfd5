"""Which alerts to send: a pure function of what the scanner saw, the time, and what was sent.

Every alert has a key; the caller stores the keys it mailed (``alerts_sent``, unique per
account) and passes them back in, which is what makes "at most once per certificate and
threshold" hold across passes, restarts and several mailer processes.

Rules (docs/mail.md):

- expiry: thresholds in days (default 28, 14, 7, 3, 1); a certificate valid for under 30 days
  is warned at a third and at a tenth of its lifetime instead. Only the tightest threshold
  crossed is sent, and none when an equal or tighter one was sent before: a certificate first
  seen with 5 days left gets one alert (7 days), not three.
- expired: once per certificate, and no expiry alerts after it.
- renewal overdue: a Let's Encrypt-style certificate (Let's Encrypt, or any lifetime of 100
  days or less: ACME CAs renew at two thirds) with under a third of its lifetime left while no
  address of the endpoint serves a newer one.
- stale deployment: an address still serving an older certificate than its siblings.
- invalid: any other problem the scanner reports at warning or critical (wrong host name,
  untrusted or self-signed chain, weak key or signature, chain problems), once per
  certificate, state and problem codes on an address.
- domain registration (RDAP: ``domain_expires_soon``, ``domain_expired``): about the
  registrable domain, not a certificate, so an alert of its own naming the domain and the date,
  once per domain, code, severity and expiry date (a renewed registration that nears its end
  again is news again).
- down: an address failing for longer than the grace period, once per outage.
- issuer changed: a new certificate from another CA (organisation; Let's Encrypt rotating
  its intermediates R10/R11 is not news), in the last 7 days.
- repeat: an ``invalid`` or ``down`` alert is an incident. One the caller names in ``repeat``
  (critical, not acknowledged, mailed longer than --renotify ago) and that is still true, as
  the same key, is mailed again as it is now, marked ``repeat`` ("still ...").
- valid / recovered: an address that was mailed an ``invalid`` / ``down`` alert and now
  serves a certificate with no such problem / answers again, once per incident (keyed
  ``valid:<the invalid key>`` / ``recovered:<the down key>``). An incident replaced by a newer
  one on the same address (worse, other codes, a new outage) clears with that one: one mail.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keychest.notify.facts import CertChange, CertInfo, EndpointFacts, days, describe_left
from keychest.scan.judge import Severity, days_left, expiry_severity
from keychest.scan.suffixes import DOMAIN_CRIT_DAYS

DEFAULT_THRESHOLDS = (28, 14, 7, 3, 1)
SHORT_LIVED = timedelta(days=30)
ACME_MAX_LIFETIME = timedelta(days=100)
ISSUER_CHANGE_WINDOW = timedelta(days=7)
# The domain's registration (RDAP), not the certificate: alerts of their own.
DOMAIN_PROBLEMS = frozenset({"domain_expires_soon", "domain_expired"})
# Problem codes with alerts of their own (expiry, stale deployment, domain registration); any
# other is "invalid".
OWN_ALERTS = frozenset({"expired", "expires_soon", "stale_deployment"}) | DOMAIN_PROBLEMS
# The alerts that open an incident (cleared by ``valid`` / ``recovered``): they carry an
# acknowledge link and are repeated under --renotify until acknowledged or over.
CLEARED_BY = {"invalid": "valid", "down": "recovered"}
INCIDENT_KINDS = frozenset(CLEARED_BY)
# What follows ``invalid:{endpoint}:{ip}:`` / ``down:{endpoint}:{ip}:`` in a sent key. Matched
# on the rest rather than split on ":", since an IPv6 address holds colons itself.
_INVALID_REST = re.compile(r"\d+:(warning|critical):[^:]*")
_DOWN_REST = re.compile(r"\d{4}-\d\d-\d\dT.*")


@dataclass(frozen=True)
class Policy:
    thresholds_days: tuple[int, ...] = DEFAULT_THRESHOLDS
    down_grace: timedelta = timedelta(hours=1)
    # The scanner's thresholds (--warn-days, --crit-days): an expiry alert carries the severity
    # the scanner, the dashboard and the metrics give the same certificate.
    warn_days: int = 30
    crit_days: int = 7


@dataclass(frozen=True)
class Alert:
    key: str
    # expiry, expired, renewal_overdue, stale_deployment, invalid, down, issuer_changed, valid,
    # recovered, domain_expires_soon, domain_expired
    kind: str
    severity: str  # warning, critical; "ok" for the clearing kinds (valid, recovered)
    title: str  # one line, for the subject and the list
    detail: str  # one or two sentences: what we saw and what to do
    endpoints: tuple[str, ...] = field(default=())
    # What happened, after the host name, for a subject: "expires in 4 days", "unreachable".
    headline: str = ""
    # More keys marked sent with this one: the older incidents of the address it clears.
    covers: tuple[str, ...] = field(default=())
    # Incidents (INCIDENT_KINDS): the address they are about, and whether this mails one again.
    endpoint_id: int | None = None
    ip: str | None = None
    repeat: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "detail": self.detail,
            "endpoints": list(self.endpoints),
            "repeat": self.repeat,
        }


def thresholds(cert: CertInfo, policy: Policy) -> list[timedelta]:
    """The moments (time left) at which this certificate is worth a warning."""
    if cert.lifetime < SHORT_LIVED:
        return [cert.lifetime / 3, cert.lifetime / 10]
    return [timedelta(days=d) for d in policy.thresholds_days]


def _expiry_sent_at_or_below(sent: frozenset[str], cert_id: int) -> list[int]:
    prefix = f"expiry:{cert_id}:"
    found = []
    for key in sent:
        if key.startswith(prefix):
            try:
                found.append(int(key[len(prefix) :]))
            except ValueError:
                continue
    return found


def _is_acme_style(cert: CertInfo) -> bool:
    return cert.is_lets_encrypt or cert.lifetime <= ACME_MAX_LIFETIME


def _scanner_severity(cert: CertInfo, now: datetime, policy: Policy) -> str:
    """An alert about a certificate is critical exactly when the scanner calls it critical
    (its dates against --crit-days); no mail calls a critical certificate a warning."""
    severity = expiry_severity(cert.not_after, now, policy.warn_days, policy.crit_days)
    return "critical" if severity == Severity.CRITICAL else "warning"


def _names(endpoints: Iterable[EndpointFacts]) -> tuple[str, ...]:
    return tuple(sorted({e.name for e in endpoints}))


KEY_MAX = 200  # alerts_sent.alert_key


def clearing_key(cleared: str, key: str) -> str:
    """``valid:<key>`` / ``recovered:<key>``, hashed when that would not fit the column."""
    full = f"{cleared}:{key}"
    return full if len(full) <= KEY_MAX else f"{cleared}:#{hashlib.sha256(key.encode()).hexdigest()}"


def _open_incidents(sent: frozenset[str], prefix: str, rest: re.Pattern[str], cleared: str) -> list[str]:
    """The sent keys of one address's incidents with no clearing key sent yet."""
    return sorted(
        key
        for key in sent
        if key.startswith(prefix)
        and rest.fullmatch(key[len(prefix) :])
        and clearing_key(cleared, key) not in sent
    )


def decide(
    endpoints: Sequence[EndpointFacts],
    changes: Sequence[CertChange],
    now: datetime,
    sent: frozenset[str],
    policy: Policy = Policy(),
    repeat: frozenset[str] = frozenset(),
) -> list[Alert]:
    """The alerts to send now for one account, most urgent first.

    ``repeat``: sent incident keys due to be mailed again; each still true comes back as it is
    now, with ``repeat`` set and "still" in its headline."""
    alerts: list[Alert] = []
    by_cert: dict[int, tuple[CertInfo, list[EndpointFacts]]] = {}
    for endpoint in endpoints:
        for cert in endpoint.certificates:
            by_cert.setdefault(cert.id, (cert, []))[1].append(endpoint)

    for cert, serving in by_cert.values():
        names = _names(serving)
        left = cert.left(now)
        where = ", ".join(names)
        if left <= timedelta(0):
            key = f"expired:{cert.id}"
            if key not in sent:
                alerts.append(
                    Alert(
                        key,
                        "expired",
                        "critical",
                        f"Certificate expired: {where}",
                        f"The certificate from {cert.issuer} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC "
                        "and is still being served. Visitors see an error until it is replaced.",
                        names,
                        "certificate expired",
                    )
                )
            continue
        if f"expired:{cert.id}" in sent:
            continue
        crossed = [t for t in thresholds(cert, policy) if left <= t]
        if crossed:
            tightest = min(crossed)
            tightest_s = int(tightest.total_seconds())
            if not any(s <= tightest_s for s in _expiry_sent_at_or_below(sent, cert.id)):
                alerts.append(
                    Alert(
                        f"expiry:{cert.id}:{tightest_s}",
                        "expiry",
                        # A threshold of the account's crossed before the scanner's: a warning.
                        _scanner_severity(cert, now, policy),
                        f"Certificate expires in {describe_left(left)}: {where}",
                        f"The certificate from {cert.issuer} expires on {cert.not_after:%Y-%m-%d %H:%M} UTC "
                        f"({describe_left(left)} from now).",
                        names,
                        f"expires in {describe_left(left)}",
                    )
                )
        if _is_acme_style(cert) and left < cert.lifetime / 3:
            newer = any(other.not_before > cert.not_before for e in serving for other in e.certificates)
            key = f"renewal_overdue:{cert.id}"
            if not newer and key not in sent:
                alerts.append(
                    Alert(
                        key,
                        "renewal_overdue",
                        _scanner_severity(cert, now, policy),
                        f"Renewal overdue: {where}",
                        f"This certificate from {cert.issuer} has {describe_left(left)} of its "
                        f"{round(days(cert.lifetime))}-day lifetime left and no newer certificate is served. "
                        "Automatic renewal normally happens with a third left: check certbot (or your "
                        "ACME client) and its deploy hook.",
                        names,
                        "renewal overdue",
                    )
                )

    for endpoint in endpoints:
        for address in endpoint.addresses:
            served = address.certificate
            if "stale_deployment" in address.problems and served is not None:
                key = f"stale:{endpoint.id}:{address.ip}:{served.id}"
                if key not in sent:
                    alerts.append(
                        Alert(
                            key,
                            "stale_deployment",
                            _scanner_severity(served, now, policy),
                            f"Old certificate still served: {endpoint.name} at {address.ip}",
                            f"{address.ip} serves a certificate (expiring {served.not_after:%Y-%m-%d}) older "
                            f"than the other addresses of {endpoint.name}: the renewal did not reach this "
                            "server. Reload it or copy the new certificate there.",
                            (endpoint.name,),
                            f"serves an old certificate at {address.ip}",
                        )
                    )
            invalid = tuple(sorted(p for p in address.problems if p not in OWN_ALERTS))
            if served is not None and invalid and address.state in ("warning", "critical"):
                # Every other problem the scanner reports is an incident too (issue 12 item 6):
                # once per certificate, state and codes, so getting worse is news again.
                key = f"invalid:{endpoint.id}:{address.ip}:{served.id}:{address.state}:{','.join(invalid)}"
                if key not in sent or _due(key, "invalid", sent, repeat):
                    again = key in sent
                    alerts.append(
                        Alert(
                            key,
                            "invalid",
                            address.state,
                            f"{_still(again)}Certificate problem at {address.ip or endpoint.name}: "
                            f"{endpoint.name}",
                            f"The scanner found {', '.join(invalid)} on the certificate from {served.issuer} "
                            f"served by {endpoint.name} at {address.ip}. Browsers may refuse it; the "
                            "dashboard explains each problem.",
                            (endpoint.name,),
                            f"{'still ' if again else ''}certificate problem: {', '.join(invalid)}",
                            endpoint_id=endpoint.id,
                            ip=address.ip,
                            repeat=again,
                        )
                    )
            open_invalid = _open_incidents(
                sent, f"invalid:{endpoint.id}:{address.ip}:", _INVALID_REST, "valid"
            )
            if open_invalid and served is not None and address.error_kind is None and not invalid:
                alerts.append(
                    Alert(
                        clearing_key("valid", open_invalid[-1]),
                        "valid",
                        "ok",
                        f"Certificate valid again at {address.ip or endpoint.name}: {endpoint.name}",
                        f"{endpoint.name} at {address.ip} now serves a certificate from {served.issuer} "
                        "without the problems we mailed about. Nothing to do.",
                        (endpoint.name,),
                        "certificate valid again",
                        tuple(clearing_key("valid", k) for k in open_invalid[:-1]),
                    )
                )
            open_down = _open_incidents(sent, f"down:{endpoint.id}:{address.ip}:", _DOWN_REST, "recovered")
            if open_down and address.error_kind is None:
                at = f" at {address.ip}" if address.ip else ""
                alerts.append(
                    Alert(
                        clearing_key("recovered", open_down[-1]),
                        "recovered",
                        "ok",
                        f"Reachable again{at}: {endpoint.name}",
                        f"{endpoint.name}{at} answers scans again after the outage we mailed about.",
                        (endpoint.name,),
                        f"reachable again{at}",
                        tuple(clearing_key("recovered", k) for k in open_down[:-1]),
                    )
                )
            if address.error_kind is not None and address.error_since is not None:
                if now - address.error_since < policy.down_grace:
                    continue
                key = f"down:{endpoint.id}:{address.ip}:{address.error_since.isoformat()}"
                if key in sent and not _due(key, "down", sent, repeat):
                    continue
                again = key in sent
                at = f" at {address.ip}" if address.ip else ""
                alerts.append(
                    Alert(
                        key,
                        "down",
                        "critical",
                        f"{_still(again)}Unreachable{at}: {endpoint.name}",
                        f"{endpoint.name}{at} has failed every scan since "
                        f"{address.error_since:%Y-%m-%d %H:%M} UTC: {address.error or address.error_kind}.",
                        (endpoint.name,),
                        f"{'still ' if again else ''}unreachable{at}",
                        endpoint_id=endpoint.id,
                        ip=address.ip,
                        repeat=again,
                    )
                )

    alerts += _domain_alerts(endpoints, now, sent)

    for change in changes:
        if change.old is None or now - change.at > ISSUER_CHANGE_WINDOW:
            continue
        if change.old.issuer == change.new.issuer:
            continue
        key = f"issuer_changed:{change.id}"
        if key in sent:
            continue
        at = f" at {change.ip}" if change.ip else ""
        alerts.append(
            Alert(
                key,
                "issuer_changed",
                "warning",
                f"Certificate changed issuer: {change.endpoint}",
                f"On {change.at:%Y-%m-%d %H:%M} UTC {change.endpoint}{at} started serving a certificate "
                f"from {change.new.issuer} instead of {change.old.issuer}. If nobody here changed CA, "
                "check who can obtain certificates for this name.",
                (change.endpoint,),
                "certificate changed issuer",
            )
        )

    # Critical first, clearing news last.
    alerts.sort(key=lambda a: (a.severity != "critical", a.severity == "ok", a.kind, a.title))
    return alerts


@dataclass(frozen=True)
class DomainNotice:
    """A registrable domain's registration (RDAP) expiring or expired, with the names of the
    endpoints under it: mail (an alert) and channels (an event) tell it in the same words."""

    key: str
    code: str  # domain_expires_soon, domain_expired
    severity: str
    domain: str
    endpoints: tuple[EndpointFacts, ...]
    title: str
    detail: str
    headline: str


def domain_notices(endpoints: Sequence[EndpointFacts], now: datetime) -> list[DomainNotice]:
    """One notice per registrable domain, code and expiry date, true now."""
    groups: dict[tuple[str, str, datetime | None], list[EndpointFacts]] = {}
    for endpoint in endpoints:
        codes = {p for a in endpoint.addresses for p in a.problems if p in DOMAIN_PROBLEMS}
        if not codes:
            continue
        code = "domain_expired" if "domain_expired" in codes else "domain_expires_soon"
        domain = endpoint.registered_domain or endpoint.name
        groups.setdefault((domain, code, endpoint.registration_expires), []).append(endpoint)
    notices = []
    for (domain, code, expires), serving in groups.items():
        left = days_left(expires, now) if expires is not None else None
        critical = code == "domain_expired" or (left is not None and left < DOMAIN_CRIT_DAYS)
        severity = "critical" if critical else "warning"
        key = (
            f"domain:{domain}:{code}:{severity}:{expires:%Y-%m-%d}" if expires else f"domain:{domain}:{code}"
        )
        lapse = "Renew it at your registrar: once it lapses, the names under it stop resolving."
        if code == "domain_expired":
            when = f"on {expires:%Y-%m-%d}" if expires is not None else "already"
            title = f"Domain registration expired: {domain}"
            detail = (
                f"The domain {domain}'s registration expired {when} (the registry's RDAP record). {lapse}"
            )
            headline = "domain registration expired"
        else:
            if expires is not None and left is not None:
                span = f"{left} day" if left == 1 else f"{left} days"
                title = f"Domain registration expires in {span}: {domain}"
                detail = (
                    f"The domain {domain}'s registration expires on {expires:%Y-%m-%d} (in {span}, the"
                    f" registry's RDAP record). {lapse}"
                )
                headline = f"domain registration expires in {span}"
            else:
                title = f"Domain registration expires soon: {domain}"
                detail = (
                    f"The domain {domain}'s registration expires soon (the registry's RDAP record). {lapse}"
                )
                headline = "domain registration expires soon"
        notices.append(DomainNotice(key, code, severity, domain, tuple(serving), title, detail, headline))
    return notices


def _domain_alerts(endpoints: Sequence[EndpointFacts], now: datetime, sent: frozenset[str]) -> list[Alert]:
    """One alert per registrable domain, listing the account's names under it."""
    return [
        Alert(n.key, n.code, n.severity, n.title, n.detail, _names(n.endpoints), n.headline)
        for n in domain_notices(endpoints, now)
        if n.key not in sent
    ]


def is_open(key: str, kind: str, sent: frozenset[str]) -> bool:
    """A mailed incident is open until its clearing alert was mailed."""
    return clearing_key(CLEARED_BY[kind], key) not in sent


def _due(key: str, kind: str, sent: frozenset[str], repeat: frozenset[str]) -> bool:
    # A cleared incident that comes back with the same key stays cleared: its clearing mail
    # went out already, so it could never clear again.
    return key in repeat and is_open(key, kind, sent)


def _still(again: bool) -> str:
    """A repeated incident's title begins with this: the reader sees it is a reminder."""
    return "Still open: " if again else ""


def _host(alert: Alert) -> str:
    first = alert.endpoints[0] if alert.endpoints else "?"
    more = len(alert.endpoints) - 1
    return f"{first} (+{more} more)" if more > 0 else first


def subject(alerts: Sequence[Alert]) -> str:
    """Names the host, so a mail client's list says which server needs looking at:
    ``keychest: www.example.net expires in 4 days``, or the count and the first host."""
    if len(alerts) == 1:
        alert = alerts[0]
        return f"keychest: {_host(alert)} {alert.headline or alert.title}"
    critical = sum(1 for a in alerts if a.severity == "critical")
    if all(a.severity == "ok" for a in alerts):
        return f"keychest: {len(alerts)} problems cleared, first {_host(alerts[0])}"
    head = f"keychest: {len(alerts)} certificate alerts"
    if critical:
        head += f" ({critical} critical)"
    # decide() puts the most urgent first.
    return f"{head}, first {_host(alerts[0])}"
