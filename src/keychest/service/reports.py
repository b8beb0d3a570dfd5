"""Weekly reports, the database side: which are due, and what goes into them."""

from __future__ import annotations

from dataclasses import dataclass

from keychest.notify import weekly
from keychest.service import alerting, outbox, preferences, visibility
from keychest.service.context import Ctx


@dataclass(frozen=True)
class WeeklyOutcome:
    email: str
    period: str | None
    queued: bool
    reason: str  # queued, nothing to report, not due, disabled, no domains


def weekly_pass(ctx: Ctx, *, email: str | None = None, force: bool = False) -> list[WeeklyOutcome]:
    """Queue the weekly reports that are due (or, with ``force``, every report now).

    A scheduled report records ``weekly:<date>`` in alerts_sent with the outbox row, so it is
    queued once per week however many passes and processes run. A forced one records nothing.
    """
    outcomes: list[WeeklyOutcome] = []
    accounts = alerting.active_accounts(ctx, email=email)
    prefs = preferences.get_many(ctx, [a.id for a in accounts])
    mapping = visibility.endpoints_by_account(ctx, [a.id for a in accounts])
    for account in accounts:
        pref = prefs[account.id]
        if not pref.weekly_enabled and not (force and email is not None):
            outcomes.append(WeeklyOutcome(account.email, None, False, "disabled"))
            continue
        period = None
        if not force:
            schedule = weekly.Schedule(pref.weekly_enabled, pref.weekly_day, pref.weekly_time, pref.timezone)
            period = weekly.due_period(schedule, ctx.now)
            if period is None or period in alerting.sent_keys(ctx, account.id):
                outcomes.append(WeeklyOutcome(account.email, period, False, "not due"))
                continue
        ids = mapping.get(account.id, [])
        if not ids:
            outcomes.append(WeeklyOutcome(account.email, period, False, "no domains"))
            continue
        facts = alerting.endpoint_facts(ctx, ids)
        changes = alerting.certificate_changes(ctx, ids)
        report = weekly.build([facts[i] for i in ids if i in facts], changes, ctx.now)
        if period is not None and not alerting.record_sent(ctx, account.id, [(period, "weekly")]):
            outcomes.append(WeeklyOutcome(account.email, period, False, "not due"))
            continue
        if not report.has_news:
            # Recorded all the same: "nothing to say" is this week's answer, not a retry later.
            outcomes.append(WeeklyOutcome(account.email, period, False, "nothing to report"))
            continue
        outbox.enqueue(
            ctx,
            kind="weekly",
            to_addr=preferences.recipient(account, pref),
            account_id=account.id,
            payload={"report": report.as_payload(), "subject": weekly.subject(report), "period": period},
        )
        outcomes.append(WeeklyOutcome(account.email, period, True, "queued"))
    return outcomes
