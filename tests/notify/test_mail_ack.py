"""Mail incidents acknowledged, repeated and held (issue 12 item 5), on every test database.

A mailed ``invalid``/``down`` alert carries an acknowledge link; an unacknowledged critical one
is mailed again every --renotify while still true; an acknowledged one is not, until it changes
or gets worse; a snoozed server's alerts wait for the end of the hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from keychest.notify.alerts import decide
from keychest.notify.facts import AddressFacts, CertInfo, EndpointFacts
from keychest.service import accounts, alerting, domains, errors, incidents, keys
from keychest.service.context import Ctx
from keychest.service.facade import Keychest
from keychest.store.models import AddressState, AlertSent, Certificate, OutboxMail
from tests.support.service import ManualClock, service_at

NOW = datetime(2026, 12, 1, 12, 0)
DAY = timedelta(days=1)


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    with service_at(db_url, NOW) as service:
        yield service


def clock(service: Keychest) -> ManualClock:
    assert isinstance(service.clock, ManualClock)
    return service.clock


def watched(service: Keychest, email: str, domain: str, state: str = "critical") -> tuple[int, int]:
    """An active account whose server the scanner found serving a certificate for another name."""
    key = service.call(keys.create).key
    endpoint_id = service.call(domains.add, key, domain).endpoint_id
    outcome = service.call(accounts.claim, key, email)
    service.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    now = service.clock()

    def store(ctx: Ctx) -> None:
        cert = Certificate(
            sha256=f"{endpoint_id:064x}", subject="CN=other.example", issuer="O=Test CA",
            issuer_name="Test CA",
            not_before=now - timedelta(days=10), not_after=now + timedelta(days=80),
            subject_alt_names=["other.example"], key_type="EC", key_bits=256,
            signature_algorithm="ecdsa-with-SHA256", pem="", first_seen_at=now,
        )  # fmt: skip
        ctx.session.add(cert)
        ctx.session.flush()
        ctx.session.add(
            AddressState(
                endpoint_id=endpoint_id, ip="192.0.2.1", state=state, certificate_id=cert.id, chain=[],
                problems=[{"code": "hostname_mismatch", "severity": state, "message": "name"}],
                since=now, last_scan_at=now,
            )
        )  # fmt: skip

    service.call(store)
    return outcome.account_id, endpoint_id


def set_state(service: Keychest, endpoint_id: int, state: str, codes: tuple[str, ...]) -> None:
    def change(ctx: Ctx) -> None:
        ctx.session.execute(
            update(AddressState)
            .where(AddressState.endpoint_id == endpoint_id)
            .values(state=state, problems=[{"code": c, "severity": state, "message": c} for c in codes])
        )

    service.call(change)


def alert_mails(service: Keychest) -> list[dict[str, Any]]:
    """Each queued alert mail's alerts, oldest mail first."""
    rows = service.read(
        lambda ctx: list(
            ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == "alerts").order_by(OutboxMail.id))
        )
    )
    return [row.payload for row in rows]


def token(ack_url: str) -> str:
    assert ack_url.startswith("http") and "/ack/" in ack_url
    return ack_url.rsplit("/", 1)[1]


def test_mailed_incident_carries_a_link_and_repeats_until_acknowledged(svc: Keychest) -> None:
    watched(svc, "ops@example.org", "www.example.net")
    assert svc.call(alerting.run_pass).mails == 1
    [first] = alert_mails(svc)
    [alert] = first["alerts"]
    assert alert["kind"] == "invalid" and alert["severity"] == "critical" and not alert["repeat"]
    link = token(alert["ack_url"])
    # Within the interval: nothing again.
    clock(svc).now = NOW + DAY - timedelta(minutes=1)
    assert svc.call(alerting.run_pass).mails == 0
    # A day on, still unacknowledged and still true: mailed again, with a new link.
    clock(svc).now = NOW + DAY
    assert svc.call(alerting.run_pass).mails == 1
    [again] = alert_mails(svc)[1]["alerts"]
    assert again["key"] == alert["key"] and again["repeat"]
    assert again["title"].startswith("Still open: ")
    assert alert_mails(svc)[1]["subject"].startswith("keychest: www.example.net still certificate problem")
    # The repeat's link replaces the first one.
    with pytest.raises(errors.ServiceError):
        svc.read(incidents.ack_info, link)
    view = svc.read(incidents.ack_info, token(again["ack_url"]))
    assert (view.type, view.severity, view.open, view.acked) == (
        "certificate.invalid",
        "critical",
        True,
        False,
    )
    assert view.endpoint == "www.example.net:443 at 192.0.2.1"
    done = svc.call(incidents.acknowledge, token(again["ack_url"]))
    assert done.acked
    # Used up: the same link does nothing more.
    with pytest.raises(errors.ServiceError):
        svc.call(incidents.acknowledge, token(again["ack_url"]))
    # Acknowledged: no more repeats, however long it stays.
    clock(svc).now = NOW + 5 * DAY
    assert svc.call(alerting.run_pass).mails == 0


def test_acknowledged_incident_that_changes_is_news_and_its_clearing_is_mailed(svc: Keychest) -> None:
    _, endpoint_id = watched(svc, "ops@example.org", "www.example.net")
    svc.call(alerting.run_pass)
    [alert] = alert_mails(svc)[0]["alerts"]
    svc.call(incidents.acknowledge, token(alert["ack_url"]))
    clock(svc).now = NOW + 2 * DAY
    assert svc.call(alerting.run_pass).mails == 0
    # Other problem codes: a new incident, mailed with its own link.
    set_state(svc, endpoint_id, "critical", ("hostname_mismatch", "self_signed"))
    assert svc.call(alerting.run_pass).mails == 1
    [changed] = alert_mails(svc)[1]["alerts"]
    assert changed["kind"] == "invalid" and not changed["repeat"] and "self_signed" in changed["key"]
    assert changed["ack_url"] != alert["ack_url"]
    # Cleared: one clearing mail (no link: nothing left to acknowledge), and the link of the
    # cleared incident now says it is over.
    set_state(svc, endpoint_id, "ok", ())
    assert svc.call(alerting.run_pass).mails == 1
    [cleared] = alert_mails(svc)[2]["alerts"]
    assert cleared["kind"] == "valid" and cleared["ack_url"] is None
    assert not svc.read(incidents.ack_info, token(changed["ack_url"])).open
    clock(svc).now = NOW + 5 * DAY
    assert svc.call(alerting.run_pass).mails == 0


def test_warnings_are_not_repeated(svc: Keychest) -> None:
    watched(svc, "ops@example.org", "www.example.net", state="warning")
    assert svc.call(alerting.run_pass).mails == 1
    [alert] = alert_mails(svc)[0]["alerts"]
    assert alert["severity"] == "warning" and alert["ack_url"]
    clock(svc).now = NOW + 3 * DAY
    assert svc.call(alerting.run_pass).mails == 0


def test_renotify_zero_never_repeats(db_url: str) -> None:
    with service_at(db_url, NOW) as base:
        svc = Keychest(
            base.db,
            replace(base.settings, notify=replace(base.settings.notify, renotify_s=0)),
            ManualClock(NOW),
        )
        watched(svc, "ops@example.org", "www.example.net")
        assert svc.call(alerting.run_pass).mails == 1
        clock(svc).now = NOW + 10 * DAY
        assert svc.call(alerting.run_pass).mails == 0


def test_two_passes_due_at_once_repeat_once(svc: Keychest) -> None:
    """The repeat's update is conditional: a second pass (another mailer process, the same
    moment) finds it done and queues nothing."""
    account_id, _ = watched(svc, "ops@example.org", "www.example.net")
    svc.call(alerting.run_pass)
    clock(svc).now = NOW + DAY
    due = svc.read(alerting.due_again, [account_id])
    assert len(due[account_id]) == 1
    assert svc.call(alerting.run_pass).mails == 1
    assert svc.read(alerting.due_again, [account_id]) == {}
    assert svc.call(alerting.run_pass).mails == 0
    [row] = svc.read(
        lambda ctx: list(ctx.session.scalars(select(AlertSent).where(AlertSent.account_id == account_id)))
    )
    assert row.last_sent_at == NOW + DAY and row.sent_at == NOW


def test_snoozed_server_waits_and_is_mailed_after_if_still_true(svc: Keychest) -> None:
    account_id, endpoint_id = watched(svc, "ops@example.org", "www.example.net")
    svc.call(incidents.snooze_server, account_id, endpoint_id, 2)
    assert svc.call(alerting.run_pass).mails == 0
    clock(svc).now = NOW + DAY
    assert svc.call(alerting.run_pass).mails == 0
    clock(svc).now = NOW + 2 * DAY + timedelta(minutes=1)
    assert svc.call(alerting.run_pass).mails == 1
    [alert] = alert_mails(svc)[0]["alerts"]
    assert alert["kind"] == "invalid"


def test_incident_cleared_during_maintenance_is_never_mailed(svc: Keychest) -> None:
    account_id, endpoint_id = watched(svc, "ops@example.org", "www.example.net")
    svc.call(
        incidents.maintenance_server, account_id, endpoint_id,
        NOW - timedelta(hours=1), NOW + timedelta(hours=2), weekly=False,
    )  # fmt: skip
    assert svc.call(alerting.run_pass).mails == 0
    set_state(svc, endpoint_id, "ok", ())
    clock(svc).now = NOW + timedelta(hours=3)
    assert svc.call(alerting.run_pass).mails == 0
    assert alert_mails(svc) == []


# --- the pure rule ---------------------------------------------------------------------------

CERT = CertInfo(7, "0" * 64, "Test CA", NOW - timedelta(days=10), NOW + timedelta(days=80))


def down_site(since: datetime) -> list[EndpointFacts]:
    return [
        EndpointFacts(
            1, "www.example.net", (AddressFacts("192.0.2.1", "error", None, "refused", "x", since),)
        )
    ]


def test_decide_repeats_only_what_is_named_open_and_still_true() -> None:
    since = NOW - timedelta(hours=3)
    [outage] = decide(down_site(since), [], NOW, frozenset())
    assert outage.kind == "down" and outage.endpoint_id == 1 and outage.ip == "192.0.2.1"
    sent = frozenset({outage.key})
    assert decide(down_site(since), [], NOW, sent) == []
    [again] = decide(down_site(since), [], NOW, sent, repeat=frozenset({outage.key}))
    assert again.key == outage.key and again.repeat and again.headline == "still unreachable at 192.0.2.1"
    # A new outage is a new key: news, not a repeat of the old one.
    [new] = decide(down_site(NOW - timedelta(hours=2)), [], NOW, sent, repeat=frozenset({outage.key}))
    assert new.key != outage.key and not new.repeat
    # Cleared once already: never "still open".
    cleared = sent | {f"recovered:{outage.key}"}
    assert decide(down_site(since), [], NOW, cleared, repeat=frozenset({outage.key})) == []
