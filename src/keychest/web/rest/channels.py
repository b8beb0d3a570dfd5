"""REST: an account's alert channels (docs/notify.md).

``GET /api/v1.0/channels`` lists them (secrets redacted), ``POST`` adds one (422 naming the
problem for a bad URL, a private address or a bad secret; a webhook's secret is shown in full
in this answer only), ``DELETE /api/v1.0/channels/{id}`` removes one, and
``POST /api/v1.0/channels/{id}/test`` sends a test notification and reports the receiver's
answer. Holds (snooze, maintenance) and incidents (``GET /api/v1.0/incidents``,
``POST /api/v1.0/servers/acknowledge``) are per server. Only an approved key of a confirmed
account has channels.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from keychest.notify import deliver
from keychest.service import channels, errors, incidents
from keychest.web.rest.inputs import Exchange
from keychest.web.rest.models import KEY_DOC, KEY_QUERY, body_schema

PREFIX = "/api/v1.0/channels"


def _item(view: channels.ChannelView) -> dict[str, Any]:
    item = asdict(view)
    item.pop("account_id")
    item["event_types"] = list(view.event_types)
    item["url"] = item.pop("label")
    return item


def _list(x: Exchange) -> dict[str, Any]:
    return {"status": "success", "channels": [_item(c) for c in x.call(channels.for_key, x.key())]}


def _add(x: Exchange) -> dict[str, Any]:
    key = x.key()
    url = x.field("url")
    kind = x.optional("kind") or deliver.kind_of(url)
    types = tuple(t.strip() for t in (x.optional("event_types") or "").split(",") if t.strip())
    new = channels.NewChannel(kind, url, x.optional("secret"), x.optional("min_severity") or "warning", types)
    # The guard resolves the host: outside the database transaction.
    checked = channels.check(new, allow_private_targets=x.service.settings.scan.allow_private_targets)
    created = x.call(channels.add, key, checked)
    answer = {"status": "created", "channel": _item(created.channel)}
    if created.secret is not None:
        answer["secret"] = created.secret
    return answer


def _remove(x: Exchange, channel_id: int) -> dict[str, Any]:
    x.call(channels.remove, x.key(), channel_id)
    return {"status": "removed", "id": channel_id}


def _test(x: Exchange, channel_id: int) -> dict[str, Any]:
    target = x.call(channels.test_target, x.key(), channel_id)
    outcome = channels.send_test(x.service.settings, target, x.service.clock())
    return {
        "status": "success" if outcome.ok else "failed",
        "delivered": outcome.ok,
        "answer": outcome.answer,
    }


def _utc(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise errors.invalid(f"{name} must be an ISO 8601 time such as 2026-12-05T22:00:00Z") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _hold_item(view: incidents.HoldView) -> dict[str, Any]:
    item = asdict(view)
    item["starts_at"] = view.starts_at.isoformat() + "Z"
    item["ends_at"] = view.ends_at.isoformat() + "Z"
    return item


def _snooze(x: Exchange) -> dict[str, Any]:
    key = x.key()
    domain = x.field("domain")
    try:
        days = float(x.field("days"))
    except ValueError:
        raise errors.invalid("days must be a number") from None
    return {"status": "snoozed", "hold": _hold_item(x.call(incidents.snooze, key, domain, days))}


def _maintenance(x: Exchange) -> dict[str, Any]:
    key = x.key()
    domain = x.field("domain")
    starts_at, ends_at = _utc(x.field("start"), "start"), _utc(x.field("end"), "end")
    weekly = (x.optional("weekly") or "").lower() in ("1", "true", "yes")
    view = x.call(incidents.maintenance, key, domain, starts_at, ends_at, weekly=weekly)
    return {"status": "scheduled", "hold": _hold_item(view)}


def _holds(x: Exchange) -> dict[str, Any]:
    return {"status": "success", "holds": [_hold_item(h) for h in x.call(incidents.holds, x.key())]}


def _remove_hold(x: Exchange, hold_id: int) -> dict[str, Any]:
    x.call(incidents.remove_hold, x.key(), hold_id)
    return {"status": "removed", "id": hold_id}


def _incident_item(view: incidents.IncidentView) -> dict[str, Any]:
    item = asdict(view)
    item.pop("endpoint_id")
    item["opened_at"] = view.opened_at.isoformat() + "Z"
    item["told"] = list(view.told)
    return item


def _incidents(x: Exchange) -> dict[str, Any]:
    found = x.call(incidents.key_incidents, x.key())
    return {"status": "success", "incidents": [_incident_item(v) for v in found]}


def _acknowledge(x: Exchange) -> dict[str, Any]:
    key = x.key()
    domain = x.field("domain")
    count = x.call(incidents.acknowledge_for_key, key, domain)
    return {"status": "acknowledged", "domain": domain, "acknowledged": count}


def add_routes(
    router: APIRouter, answer: Callable[[Request, Callable[[Exchange], Any]], Awaitable[Any]]
) -> None:
    """Added to the REST router by routes.build_router (same limits, key handling, errors)."""

    @router.get(PREFIX, tags=["channels"], summary="The account's alert channels", openapi_extra=KEY_QUERY)
    async def list_channels(request: Request) -> Any:
        return await answer(request, _list)

    @router.post(
        PREFIX,
        tags=["channels"],
        summary="Add an alert channel: an Apprise URL or a signed webhook",
        openapi_extra={
            **KEY_QUERY,
            **body_schema(
                {
                    "url": "Apprise URL (slack://, ntfy://, json://...) or http(s) webhook URL",
                    "kind": "apprise or webhook (default: webhook for http(s) URLs)",
                    "secret": "webhook only: whsec_<base64>; made for you when absent",
                    "min_severity": "warning (default) or critical",
                    "event_types": "comma-separated event types; empty: all",
                    "api_key": KEY_DOC,
                },
                ["url"],
            ),
        },
    )
    async def add_channel(request: Request) -> Any:
        return await answer(request, _add)

    @router.delete(
        PREFIX + "/{channel_id}", tags=["channels"], summary="Remove a channel", openapi_extra=KEY_QUERY
    )
    async def delete_channel(channel_id: int, request: Request) -> Any:
        return await answer(request, lambda x: _remove(x, channel_id))

    @router.post(
        PREFIX + "/{channel_id}/test",
        tags=["channels"],
        summary="Send a test notification; the receiver's answer",
        openapi_extra=KEY_QUERY,
    )
    async def test_channel(channel_id: int, request: Request) -> Any:
        return await answer(request, lambda x: _test(x, channel_id))

    @router.post(
        "/api/v1.0/servers/snooze",
        tags=["channels"],
        summary="Hold a server's alerts for N days (sent afterwards only if still true)",
        openapi_extra={
            **KEY_QUERY,
            **body_schema(
                {"domain": "name or name:port", "days": "1 to 365", "api_key": KEY_DOC}, ["domain"]
            ),
        },
    )
    async def snooze(request: Request) -> Any:
        return await answer(request, _snooze)

    @router.post(
        "/api/v1.0/servers/maintenance",
        tags=["channels"],
        summary="A maintenance window for a server: once, or weekly",
        openapi_extra={
            **KEY_QUERY,
            **body_schema(
                {
                    "domain": "name or name:port",
                    "start": "ISO 8601, e.g. 2026-12-05T22:00:00Z",
                    "end": "ISO 8601",
                    "weekly": "true: the same span every week",
                    "api_key": KEY_DOC,
                },
                ["domain", "start", "end"],
            ),
        },
    )
    async def maintenance(request: Request) -> Any:
        return await answer(request, _maintenance)

    @router.get(
        "/api/v1.0/incidents",
        tags=["channels"],
        summary="Open incidents of the key's servers, as mail and the account's channels were told",
        openapi_extra=KEY_QUERY,
    )
    async def list_incidents(request: Request) -> Any:
        return await answer(request, _incidents)

    @router.post(
        "/api/v1.0/servers/acknowledge",
        tags=["channels"],
        summary="Acknowledge a server's open incidents: no repeats until they change or get worse",
        openapi_extra={
            **KEY_QUERY,
            **body_schema({"domain": "name or name:port", "api_key": KEY_DOC}, ["domain"]),
        },
    )
    async def acknowledge(request: Request) -> Any:
        return await answer(request, _acknowledge)

    @router.get(
        "/api/v1.0/holds",
        tags=["channels"],
        summary="Snoozes and maintenance windows",
        openapi_extra=KEY_QUERY,
    )
    async def list_holds(request: Request) -> Any:
        return await answer(request, _holds)

    @router.delete(
        "/api/v1.0/holds/{hold_id}",
        tags=["channels"],
        summary="End a snooze or window",
        openapi_extra=KEY_QUERY,
    )
    async def delete_hold(hold_id: int, request: Request) -> Any:
        return await answer(request, lambda x: _remove_hold(x, hold_id))
