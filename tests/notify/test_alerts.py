"""The alert decision, as a pure function: facts + now + already sent -> alerts."""

from __future__ import annotations

from datetime import datetime, timedelta

from keychest.notify.alerts import Alert, Policy, decide, subject
from keychest.notify.facts import AddressFacts, CertChange, CertInfo, EndpointFacts

NOW = datetime(2026, 12, 1, 12, 0)
DAY = timedelta(days=1)


def cert(
    cid: int, left: timedelta, lifetime: timedelta = 90 * DAY, issuer: str = "Test CA", le: bool = False
):
    not_after = NOW + left
    return CertInfo(cid, f"{cid:064x}", issuer, not_after - lifetime, not_after, le)


def endpoint(eid: int, *certs: CertInfo, name: str | None = None, problems=()) -> EndpointFacts:
    addresses = tuple(
        AddressFacts(f"192.0.2.{i + 1}", "ok", c, problems=problems if i else ()) for i, c in enumerate(certs)
    )
    return EndpointFacts(eid, name or f"e{eid}.example.net", addresses)


def run(endpoints, now=NOW, sent=frozenset(), changes=(), policy: Policy | None = None) -> list[Alert]:
    return decide(endpoints, changes, now, frozenset(sent), policy or Policy())


def replay(endpoints_at, moments) -> list[tuple[datetime, Alert]]:
    """Run the decision at each moment, remembering what was sent, as the pass does."""
    sent: set[str] = set()
    out = []
    for moment in moments:
        for alert in decide(endpoints_at(moment), (), moment, frozenset(sent)):
            sent.add(alert.key)
            out.append((moment, alert))
    return out


def test_nothing_for_a_fresh_certificate() -> None:
    assert run([endpoint(1, cert(1, 60 * DAY))]) == []


def test_first_seen_inside_several_thresholds_gets_one_alert_for_the_tightest() -> None:
    alerts = run([endpoint(1, cert(1, 5 * DAY, lifetime=365 * DAY))])
    assert [a.kind for a in alerts] == ["expiry"]
    assert alerts[0].key == f"expiry:1:{7 * 86400}"
    # 5 days left is under the scanner's --crit-days (7): critical, as the scanner says.
    assert "5 days" in alerts[0].title and alerts[0].severity == "critical"


def test_each_threshold_crossed_exactly_once_over_time() -> None:
    c = cert(7, 40 * DAY, lifetime=365 * DAY)
    hours = [NOW + timedelta(hours=h) for h in range(0, 41 * 24, 6)]
    sent = replay(lambda _: [endpoint(1, c)], hours)
    kinds = [(a.kind, a.key.rsplit(":", 1)[-1]) for _, a in sent]
    expiry = [k for k in kinds if k[0] == "expiry"]
    assert [int(s) // 86400 for _, s in expiry] == [28, 14, 7, 3, 1]
    assert kinds[-1] == ("expired", "7")
    assert sum(1 for k in kinds if k[0] == "expired") == 1


def test_no_expiry_alert_after_a_tighter_one_was_sent_even_if_thresholds_change() -> None:
    c = cert(1, 6 * DAY, lifetime=365 * DAY)
    assert run([endpoint(1, c)], sent={f"expiry:1:{7 * 86400}"}, policy=Policy(thresholds_days=(10, 5))) == []
    later = run([endpoint(1, c)], now=NOW + 2 * DAY, sent={f"expiry:1:{7 * 86400}"}, policy=Policy((10, 5)))
    assert [a.key for a in later] == [f"expiry:1:{5 * 86400}"]


def test_short_lived_certificates_warn_at_a_third_and_a_tenth() -> None:
    c = cert(3, 6 * DAY, lifetime=9 * DAY)  # thresholds 3 days and 0.9 days
    assert run([endpoint(1, c)]) == []
    third = run([endpoint(1, c)], now=NOW + 3 * DAY + timedelta(minutes=1))
    assert [a.key for a in third if a.kind == "expiry"] == [f"expiry:3:{3 * 86400}"]
    tenth = run([endpoint(1, c)], now=NOW + 5.2 * DAY, sent={a.key for a in third})
    assert [a.key for a in tenth if a.kind == "expiry"] == [f"expiry:3:{int(0.9 * 86400)}"]


def test_expired_once_and_critical() -> None:
    alerts = run([endpoint(1, cert(4, -DAY))])
    assert [(a.kind, a.severity) for a in alerts] == [("expired", "critical")]
    assert run([endpoint(1, cert(4, -DAY))], sent={"expired:4"}) == []


def test_one_certificate_on_two_endpoints_is_one_alert_naming_both() -> None:
    c = cert(5, 2 * DAY, lifetime=365 * DAY)
    alerts = run([endpoint(1, c), endpoint(2, c)])
    assert len([a for a in alerts if a.kind == "expiry"]) == 1
    assert alerts[0].endpoints == ("e1.example.net", "e2.example.net") and alerts[0].severity == "critical"


def test_renewal_overdue_for_acme_style_certificates_without_a_newer_one() -> None:
    le = cert(6, 25 * DAY, lifetime=90 * DAY, issuer="Let's Encrypt", le=True)
    kinds = {a.kind for a in run([endpoint(1, le)])}
    assert kinds == {"expiry", "renewal_overdue"}
    # A year-long certificate with 25 days left is on its normal course.
    assert {a.kind for a in run([endpoint(1, cert(8, 25 * DAY, lifetime=365 * DAY))])} == {"expiry"}
    # A newer certificate on another address: that is a stale deployment, not an overdue renewal.
    newer = cert(9, 89 * DAY, lifetime=90 * DAY, le=True)
    both = run([endpoint(1, newer, le, problems=("stale_deployment",))])
    assert {a.kind for a in both} == {"expiry", "stale_deployment"}


def test_stale_deployment_names_the_address() -> None:
    new, old = cert(10, 80 * DAY), cert(11, 40 * DAY, lifetime=365 * DAY)
    alerts = run([endpoint(1, new, old, problems=("stale_deployment",))])
    assert [a.kind for a in alerts] == ["stale_deployment"]
    assert "192.0.2.2" in alerts[0].title and alerts[0].key == "stale:1:192.0.2.2:11"


def test_down_only_after_the_grace_period_and_once_per_outage() -> None:
    def down(since: datetime) -> EndpointFacts:
        address = AddressFacts("192.0.2.1", "error", None, "refused", "connection refused", since)
        return EndpointFacts(1, "down.example.net", (address,))

    assert run([down(NOW - timedelta(minutes=59))]) == []
    alerts = run([down(NOW - timedelta(minutes=61))])
    assert [(a.kind, a.severity) for a in alerts] == [("down", "critical")]
    assert run([down(NOW - timedelta(minutes=61))], sent={alerts[0].key}) == []
    # Recovered and down again later: a new outage, a new alert.
    assert len(run([down(NOW - timedelta(hours=2))], now=NOW + DAY, sent={alerts[0].key})) == 1
    assert run([down(NOW - timedelta(minutes=20))], policy=Policy(down_grace=timedelta(minutes=15)))


def test_issuer_change_alerts_but_not_the_same_ca_rotating_intermediates() -> None:
    old, new = cert(20, 10 * DAY, issuer="Let's Encrypt"), cert(21, 89 * DAY, issuer="Other CA")
    same = cert(22, 89 * DAY, issuer="Let's Encrypt")
    changes = [
        CertChange(1, 1, "e1.example.net", "192.0.2.1", NOW - DAY, old, new),
        CertChange(2, 1, "e1.example.net", "192.0.2.1", NOW - DAY, old, same),
        CertChange(3, 1, "e1.example.net", "192.0.2.1", NOW - 9 * DAY, old, new),
    ]
    alerts = run([endpoint(1, new)], changes=changes)
    assert [a.key for a in alerts] == ["issuer_changed:1"]
    assert "Other CA" in alerts[0].detail


def test_subject_names_the_host() -> None:
    alerts = run([endpoint(1, cert(1, -DAY)), endpoint(2, cert(2, 10 * DAY, lifetime=365 * DAY))])
    assert subject(alerts) == "keychest: 2 certificate alerts (1 critical), first e1.example.net"
    assert subject(alerts[:1]) == "keychest: e1.example.net certificate expired"
    one = run(
        [endpoint(3, cert(3, 4 * DAY + 23 * timedelta(hours=1), lifetime=365 * DAY), name="www.example.net")]
    )
    assert subject(one) == "keychest: www.example.net expires in 4 days"


def test_one_number_and_one_severity_with_the_scanner() -> None:
    # Issue 11 item 7: 4 days 23 hours left is "4 days" (days_left, rounded down), never
    # "in 5 days"; and the severity is the scanner's for the same dates and thresholds.
    from keychest.scan.judge import Severity, days_left, expiry_severity

    left = 4 * DAY + timedelta(hours=23)
    c = cert(1, left, lifetime=365 * DAY)
    (alert,) = run([endpoint(1, c)])
    assert days_left(c.not_after, NOW) == 4
    assert "expires in 4 days" in alert.title and "5 days" not in alert.title + alert.detail
    assert alert.severity == "critical" and expiry_severity(c.not_after, NOW, 30, 7) == Severity.CRITICAL
    # A renewal overdue on that certificate is critical too: one severity per certificate.
    overdue = run([endpoint(1, cert(2, left, lifetime=90 * DAY))])
    assert {a.kind: a.severity for a in overdue} == {"expiry": "critical", "renewal_overdue": "critical"}
    # With the scanner's critical threshold at 3 days, the same certificate is a warning.
    (relaxed,) = run([endpoint(1, c)], policy=Policy(warn_days=30, crit_days=3))
    assert relaxed.severity == "warning"
