"""REST /api/v1.0/incidents and /api/v1.0/servers/acknowledge through the real app on every test
database: a server's open incident, as mail and the account's channel were told of it, is
listed and acknowledged once for both, and then neither repeats it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from keychest.service import alerting, incidents
from keychest.service.facade import Keychest
from tests.notify.receiver import receiver
from tests.notify.test_channels import NOW, Clock
from tests.notify.test_channels_rest import app_for, confirmed_key, problem_host


@pytest.fixture
def app(db_url: str) -> Iterator[tuple[Keychest, TestClient]]:
    service, client = app_for(db_url, allow_private=True)
    with client:
        yield service, client
    service.db.dispose()


def test_list_and_acknowledge_once_for_mail_and_channel(app: tuple[Keychest, TestClient]) -> None:
    service, client = app
    assert isinstance(service.clock, Clock)
    key = confirmed_key(service, "ops@example.org", "www.example.net")
    other = confirmed_key(service, "dev@example.org", "api.example.net")
    with receiver() as hook:
        added = client.post("/api/v1.0/channels", json={"api_key": key, "url": hook.url + "/in"})
        assert added.status_code == 200, added.text
        label = added.json()["channel"]["url"]
        assert client.get("/api/v1.0/incidents", params={"api_key": key}).json()["incidents"] == []

        problem_host(service, "www.example.net")
        assert service.call(alerting.run_pass).mails == 1
        assert service.call(incidents.run_pass).queued == 1
        [incident] = client.get("/api/v1.0/incidents", params={"api_key": key}).json()["incidents"]
        assert incident == {
            "type": "certificate.invalid",
            "domain": "www.example.net",
            "ip": "192.0.2.7",
            "severity": "critical",
            "opened_at": NOW.isoformat() + "Z",
            "acknowledged": False,
            "told": sorted(["mail", label]),
        }
        # Another account sees nothing of it and cannot acknowledge it.
        assert client.get("/api/v1.0/incidents", params={"api_key": other}).json()["incidents"] == []
        refused = client.post(
            "/api/v1.0/servers/acknowledge", json={"api_key": other, "domain": "www.example.net"}
        )
        assert refused.status_code == 404
        missing = client.post("/api/v1.0/servers/acknowledge", json={"api_key": key})
        assert missing.status_code == 422 and "domain" in missing.json()["error"]

        done = client.post(
            "/api/v1.0/servers/acknowledge", json={"api_key": key, "domain": "www.example.net"}
        )
        assert done.status_code == 200, done.text
        assert done.json() == {"status": "acknowledged", "domain": "www.example.net", "acknowledged": 1}
        again = client.post(
            "/api/v1.0/servers/acknowledge", json={"api_key": key, "domain": "www.example.net"}
        )
        assert again.json()["acknowledged"] == 0
        [acked] = client.get("/api/v1.0/incidents", params={"api_key": key}).json()["incidents"]
        assert acked["acknowledged"] is True

        # Two days on, still true: neither mail nor the channel repeats it.
        service.clock.now = NOW + timedelta(days=2)
        assert service.call(alerting.run_pass).mails == 0
        assert service.call(incidents.run_pass).queued == 0


def test_unacknowledged_incident_repeats_on_both(app: tuple[Keychest, TestClient]) -> None:
    """The counterpart of the above: without the acknowledgement, both repeat after --renotify."""
    service, client = app
    assert isinstance(service.clock, Clock)
    key = confirmed_key(service, "ops@example.org", "www.example.net")
    with receiver() as hook:
        assert (
            client.post("/api/v1.0/channels", json={"api_key": key, "url": hook.url + "/in"}).status_code
            == 200
        )
        problem_host(service, "www.example.net")
        assert service.call(alerting.run_pass).mails == 1
        assert service.call(incidents.run_pass).queued == 1
        service.clock.now = NOW + timedelta(days=2)
        assert service.call(alerting.run_pass).mails == 1
        assert service.call(incidents.run_pass).queued == 1
