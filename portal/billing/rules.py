"""Billing rules: what is billable, which timestamp a meter event gets, and Stripe's windows.

The claim (``claim``), the senders (``sender``), the dry run (``preview``),
the recovery commands (``recovery``) and ``flask usage-status`` (``status``)
all ask these; the claim's SQL spells ``skip_reason`` and ``meter_timestamp``
again in SQL, and says so.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime, timedelta

from portal.plans import PLANS, QUOTA_EVENT_TYPES

STRIPE_MAX_EVENT_AGE = timedelta(days=35)
"""Stripe refuses meter events whose timestamp is older than this."""
CLAIM_AGE_MARGIN = timedelta(minutes=15)
"""Usage this close to Stripe's limit when claimed is failed at once: it could
not be sent before it crosses the limit if the first attempt hits a snag."""
SEND_AGE_MARGIN = timedelta(minutes=2)
"""Clock differences with Stripe, and the request's own travel time."""
DEDUPE_SAFE_AGE = timedelta(hours=23)
"""Stripe deduplicates identifiers for at least 24 hours; an hour to spare."""

IDENTIFIER_PREFIX = "aiu_"
"""Starts every meter event identifier; the claim adds a random UUID's 32 hex digits, so
no other database can produce one (36 characters)."""

PAID_PLAN_IDS = frozenset(plan.id for plan in PLANS.values() if plan.is_paid)
BILLABLE_EVENT_TYPES = frozenset(QUOTA_EVENT_TYPES)


class SkipReason(enum.StrEnum):
    """Why an event leaves the backlog without being sent (``usage_report_skips.reason``)."""

    NOT_BILLABLE = "not_billable"
    """Its event type does not consume quota (e.g. a refinement)."""
    FREE_PLAN = "free_plan"
    NO_CUSTOMER = "no_customer"
    """Paid usage whose billing subject has no Stripe customer: nobody to bill."""
    ALREADY_REPORTED = "already_reported"
    """Reported by other means before this reporter took over (migration 0005 keeps
    such skips from earlier versions; the reporter no longer makes them)."""


def skip_reason(event_type: str, plan_id: str, stripe_customer_id: str | None) -> SkipReason | None:
    """Why this usage is not sent to Stripe, or ``None`` when it is billable."""
    if event_type not in BILLABLE_EVENT_TYPES:
        return SkipReason.NOT_BILLABLE
    if plan_id not in PAID_PLAN_IDS:
        return SkipReason.FREE_PLAN
    if not stripe_customer_id:
        return SkipReason.NO_CUSTOMER
    return None


def meter_timestamp(
    latest: datetime, period_start: datetime, period_end: datetime, now: datetime
) -> datetime:
    """The meter event's timestamp: the batch's latest usage, in whole seconds, inside its period.

    Stripe assigns a meter event to the invoice whose period contains its
    timestamp, so the timestamp must stay in ``[period_start, period_end)``
    even when the anchor has fractions of a second; and never ahead of ``now``
    unless the period itself has not started yet (a fast client clock).
    """
    first = math.ceil(period_start.timestamp())
    last = math.ceil(period_end.timestamp()) - 1
    moment = min(math.floor(latest.timestamp()), math.floor(now.timestamp()))
    return datetime.fromtimestamp(max(first, min(moment, last)), UTC)


TOO_OLD_REASON = (
    "{count} usage events occurred more than "
    f"{STRIPE_MAX_EVENT_AGE.days} days ago (the oldest at "
    "{oldest} UTC); Stripe refuses meter events older "
    f"than {STRIPE_MAX_EVENT_AGE.days} days, so this usage cannot be billed "
    "through the meter"
)
"""Why a claimed group of usage is failed at once; ``oldest`` as ``YYYY-MM-DD HH:MM``."""


def listed_event_ids(table: str) -> str:
    """SQL for (``event_id``, ``owner``): every usage event listed by a row of ``table``.

    ``table`` is ``usage_report_batches`` or ``usage_report_skips``; ``owner``
    is the listing row's id.
    """
    return (
        f"SELECT CAST(j.value AS uuid) AS event_id, t.id AS owner FROM {table} AS t, "
        "json_array_elements_text(t.event_ids) AS j"
    )
