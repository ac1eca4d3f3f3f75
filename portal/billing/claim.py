"""The claim: a chunk of the backlog becomes outbox rows (batches and skips) in one statement.

A claim locks a chunk of ``usage_report_backlog`` with ``FOR UPDATE SKIP
LOCKED`` (so concurrent runs on several machines take disjoint events) and
deletes it in the same statement, which writes the chunk's batches, grouped
by Stripe customer, meter and billing period, and its skips. All of it is
committed *before* Stripe is called: each event leaves the backlog exactly
once, into exactly one batch or skip (see ``reporter``).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, text
from sqlalchemy.orm import Session

from portal.billing.rules import (
    BILLABLE_EVENT_TYPES,
    CLAIM_AGE_MARGIN,
    IDENTIFIER_PREFIX,
    PAID_PLAN_IDS,
    STRIPE_MAX_EVENT_AGE,
    TOO_OLD_REASON,
)
from portal.billing.run_state import RunState

# The claim in one statement: lock a chunk of the backlog (in its index's
# order, so each customer's usage lands in few, large batches) and delete it,
# classify its events as skip_reason() does, write the unbillable ones as
# skips and group the rest into one batch per customer and period with its
# events' ids; groups too old to send are failed at once. meter_timestamp is
# meter_timestamp()'s rule. Nothing per event comes back. A chunk another
# claim has locked is skipped; one it has deleted and committed is gone: each
# backlog row is taken once.
_CLAIM_SQL = """
WITH locked AS (
    SELECT ctid AS position FROM usage_report_backlog
    ORDER BY organization_id, user_id, period_start
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
taken AS (
    DELETE FROM usage_report_backlog
    WHERE ctid = ANY(ARRAY(SELECT position FROM locked))
    RETURNING event_id
),
picked AS (
    -- One primary-key lookup per event. Given a join, the planner scans the
    -- whole table once thousands of ids come in; OFFSET 0 keeps the lateral
    -- lookup from being turned into such a join.
    SELECT e.*
    FROM taken,
    LATERAL (
        SELECT id, organization_id, user_id, quantity, occurred_at, period_start, period_end,
            event_type, plan_id
        FROM usage_events
        WHERE id = taken.event_id
        OFFSET 0
    ) AS e
),
customers AS (
    SELECT p.*, CASE WHEN p.organization_id IS NULL THEN s.stripe_customer_id
            ELSE o.stripe_customer_id END AS customer
    FROM picked AS p
    LEFT JOIN user_subscriptions AS s ON p.organization_id IS NULL AND s.user_id = p.user_id
    LEFT JOIN organizations AS o ON o.id = p.organization_id
),
classified AS (
    SELECT id, quantity, occurred_at, period_start, period_end, customer,
        occurred_at < :cutoff AS too_old,
        CASE
            WHEN event_type <> ALL(CAST(:billable_types AS text[])) THEN 'not_billable'
            WHEN plan_id <> ALL(CAST(:paid_plans AS text[])) THEN 'free_plan'
            WHEN COALESCE(customer, '') = '' THEN 'no_customer'
        END AS skip_reason
    FROM customers
),
skips AS (
    INSERT INTO usage_report_skips (reason, run_id, created_at, event_count, value,
        oldest_occurred_at, latest_occurred_at, event_ids)
    SELECT skip_reason, :run_id, :now, COUNT(*), SUM(quantity), MIN(occurred_at),
        MAX(occurred_at), json_agg(id)
    FROM classified
    WHERE skip_reason IS NOT NULL
    GROUP BY skip_reason
    RETURNING reason, event_count
),
grouped AS (
    SELECT customer, period_start, period_end, too_old, SUM(quantity) AS value,
        COUNT(*) AS event_count, MAX(occurred_at) AS latest, MIN(occurred_at) AS oldest,
        json_agg(id) AS event_ids
    FROM classified
    WHERE skip_reason IS NULL
    GROUP BY customer, period_start, period_end, too_old
),
batches AS (
    INSERT INTO usage_report_batches (identifier, stripe_customer_id, event_name, period_start,
        period_end, value, event_count, meter_timestamp, status, attempts, created_at,
        queued_at, created_run_id, last_run_id, failed_at, last_error, event_ids)
    SELECT :prefix || replace(CAST(gen_random_uuid() AS text), '-', ''), customer,
        :event_name, period_start, period_end, value, event_count,
        to_timestamp(GREATEST(
            ceil(extract(epoch FROM period_start)),
            LEAST(
                floor(extract(epoch FROM latest)),
                floor(extract(epoch FROM CAST(:now AS timestamptz))),
                ceil(extract(epoch FROM period_end)) - 1
            )
        )),
        CASE WHEN too_old THEN 'failed' ELSE 'pending' END, 0, :now, :now, :run_id, :run_id,
        CASE WHEN too_old THEN CAST(:now AS timestamptz) END,
        CASE WHEN too_old THEN format(:too_old_reason, event_count,
            to_char(oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')) END,
        event_ids
    FROM grouped
    ORDER BY customer, period_start, too_old
    RETURNING status, event_count
)
SELECT 'claimed', NULL, (SELECT COUNT(*) FROM taken)
UNION ALL SELECT 'skipped', reason, event_count FROM skips
UNION ALL SELECT 'failed_batches', NULL, COUNT(*) FROM batches WHERE status = 'failed'
UNION ALL SELECT 'failed_events', NULL, COALESCE(SUM(event_count), 0) FROM batches
    WHERE status = 'failed'
"""


CLAIM = text(_CLAIM_SQL).columns(kind=String(), reason=String(), count=Integer())


def claim_chunk(session: Session, state: RunState, event_name: str, size: int) -> int:
    """Turn up to ``size`` backlog events into batches and skips, and commit them.

    Returns how many events left the backlog; 0 when it is empty. The run's
    counters get the claimed events, the skips and the batches failed at once.
    """
    parameters = claim_parameters(size, now=state.now(), event_name=event_name, run_id=state.run_id)
    rows = session.execute(CLAIM, parameters).all()
    session.commit()
    claimed = failed = failed_events = 0
    reasons: Counter[str] = Counter()
    for kind, reason, count in rows:
        if kind == "claimed":
            claimed = int(count)
        elif kind == "skipped":
            reasons[reason] += int(count)
        elif kind == "failed_batches":
            failed = int(count)
        elif kind == "failed_events":
            failed_events = int(count)
    # Senders may be counting at the same moment (claim_while_sending).
    state.skip(reasons)
    state.count(claimed=claimed, failed=failed)
    state.progress(sum(reasons.values()) + failed_events)
    return claimed


def claim_parameters(
    size: int, *, now: datetime, event_name: str, run_id: int | None
) -> dict[str, Any]:
    """``CLAIM``'s parameters, for a chunk of ``size`` events claimed by run ``run_id``."""
    return {
        "limit": size,
        "now": now,
        "cutoff": now - STRIPE_MAX_EVENT_AGE + CLAIM_AGE_MARGIN,
        "event_name": event_name,
        "run_id": run_id,
        "prefix": IDENTIFIER_PREFIX,
        "too_old_reason": TOO_OLD_REASON.format(count="%s", oldest="%s"),
        "billable_types": sorted(BILLABLE_EVENT_TYPES),
        "paid_plans": sorted(PAID_PLAN_IDS),
    }
