"""The SQL that records usage: the event, the running total with its cap, the member's share,
and the reporter's backlog row, for single events and batches alike.

Written as PostgreSQL's own SQL (``INSERT … ON CONFLICT``, data-modifying
CTEs, ``json_to_recordset``) so that one statement does what would otherwise
take several round trips, and run through SQLAlchemy as ``text()``
constructs built once, which its compiled cache keeps. (SQLAlchemy does not
cache its own ``ON CONFLICT`` constructs: compiling one costs more than the
database takes to run it.)

Locks are always taken in one order: the idempotency key's index entry, then
the subject's total, then the member's share. Concurrent recordings queue
and never deadlock.
"""

from __future__ import annotations

import functools

from sqlalchemy import Integer, TextClause, Uuid, bindparam, text
from sqlalchemy.sql.selectable import TextualSelect

from portal.usage.subjects import SubjectKind

EVENT_COLUMNS = (
    "id",
    "user_id",
    "organization_id",
    "plan_id",
    "event_type",
    "quantity",
    "idempotency_key",
    "occurred_at",
    "recorded_at",
    "period_start",
    "period_end",
    "metadata",
)
ENQUEUE = "INSERT INTO usage_report_backlog (event_id, organization_id, user_id, period_start)"
"""Puts recorded events in the reporter's backlog: every event, once it is in (and, if it
counts, admitted)."""

_SUBJECT_COLUMN = {SubjectKind.USER: "user_id", SubjectKind.ORGANIZATION: "organization_id"}
# The hard cap lives in the statement itself, so the row lock that serializes
# concurrent increments also enforces it. The plan's current allowance wins:
# seats bought mid-period count at once.
_CAP = "WHERE usage_records.used + excluded.used <= excluded.included"


def _add_to_total(kind: SubjectKind, source: str, *, capped: bool, returning: bool) -> str:
    """Upsert the subject's running total; ``source`` is ``VALUES (…)`` or a ``SELECT``."""
    column = _SUBJECT_COLUMN[kind]
    return f"""
        INSERT INTO usage_records ({column}, period_start, period_end, used, included,
            plan_id, updated_at)
        {source}
        ON CONFLICT ({column}, period_start) WHERE {column} IS NOT NULL DO UPDATE SET
            used = usage_records.used + excluded.used,
            included = excluded.included,
            plan_id = excluded.plan_id,
            updated_at = excluded.updated_at
        {_CAP if capped else ""}
        {"RETURNING used" if returning else ""}"""


def _add_to_member_share(source: str, *, returning: bool) -> str:
    return f"""
        INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
        {source}
        ON CONFLICT (organization_id, period_start, user_id) DO UPDATE SET
            used = member_usage.used + excluded.used,
            last_used_at = GREATEST(member_usage.last_used_at, excluded.last_used_at)
        {"RETURNING used" if returning else ""}"""


@functools.cache
def record_event(kind: SubjectKind, capped: bool, counts: bool) -> TextualSelect:
    """One event, its total, share and backlog row, in one statement.

    Returns one row: ``event_id`` (null when the idempotency key was recorded
    before: nothing was written), ``used`` (the subject's new total; null when
    the event does not count or the cap refused it) and ``member_used``.
    ``total`` only adds when ``event`` inserted; ``share`` only when ``total``
    added; ``queued`` takes the event once it is in and, if it counts,
    admitted. A capped event the cap refuses is inserted all the same: the
    caller takes it back in the same transaction (``delete_events``).
    """
    columns = ", ".join(EVENT_COLUMNS)
    values = ", ".join(
        "CAST(:metadata AS json)" if name == "metadata" else f":{name}" for name in EVENT_COLUMNS
    )
    parts = [
        f"""event AS (
            INSERT INTO usage_events ({columns}) VALUES ({values})
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
        )"""
    ]
    selected = ["(SELECT id FROM event) AS event_id", "NULL::bigint", "NULL::bigint"]
    if counts:
        admit = "WHERE :quantity <= :included" if capped else ""
        source = (
            "SELECT :subject_id, :period_start, :period_end, :quantity, :included, :plan_id, "
            f":recorded_at FROM event {admit}"
        )
        parts.append(f"total AS ({_add_to_total(kind, source, capped=capped, returning=True)})")
        selected[1] = "(SELECT used FROM total)"
        if kind is SubjectKind.ORGANIZATION:
            share_source = (
                "SELECT :subject_id, :period_start, :user_id, :quantity, :occurred_at FROM total"
            )
            parts.append(f"share AS ({_add_to_member_share(share_source, returning=True)})")
            selected[2] = "(SELECT used FROM share)"
    admitted = "event, total" if counts else "event"
    parts.append(
        f"queued AS ({ENQUEUE} SELECT event.id, :organization_id, :user_id, :period_start "
        f"FROM {admitted})"
    )
    selected[1] += " AS used"
    selected[2] += " AS member_used"
    sql = f"WITH {', '.join(parts)} SELECT {', '.join(selected)}"
    return (
        text(sql)
        .bindparams(bindparam("id", type_=Uuid()))
        .columns(event_id=Uuid(), used=Integer(), member_used=Integer())
    )


delete_events = text("DELETE FROM usage_events WHERE id IN :event_ids").bindparams(
    bindparam("event_ids", type_=Uuid(), expanding=True)
)
"""Takes back events a hard cap refused, in the transaction that inserted them."""


# Batches. PostgreSQL takes the whole batch as JSON parameters: a
# 12,000-parameter INSERT cost more to build and parse than to execute. What a
# user's events share (who is charged, on which plan, for which period) is
# sent once per user and period, as a "charge", and the time of recording
# once. PostgreSQL reads a 1,000-event batch out of it in about 2 ms.
_CHARGES = """json_to_recordset(CAST(:charges AS json)) AS c(
        charge integer, user_id integer, organization_id integer, plan_id text,
        period_start timestamptz, period_end timestamptz)"""

insert_events = text(
    f"""
    INSERT INTO usage_events (id, user_id, organization_id, plan_id, event_type, quantity,
        idempotency_key, occurred_at, recorded_at, period_start, period_end, metadata)
    SELECT e.id, c.user_id, c.organization_id, c.plan_id, e.event_type, e.quantity,
        e.idempotency_key, coalesce(e.occurred_at, :now), :now, c.period_start,
        c.period_end, e.metadata
    FROM json_to_recordset(CAST(:events AS json)) AS e(
        id uuid, charge integer, event_type text, quantity integer, idempotency_key text,
        occurred_at timestamptz, metadata json)
    JOIN {_CHARGES} USING (charge)
    ORDER BY e.idempotency_key
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
"""
).columns(id=Uuid())
"""The batch's events, in idempotency-key order; returns the ids of those whose key was new."""

enqueue_events = text(
    f"""
    {ENQUEUE} SELECT e.id, c.organization_id, c.user_id, c.period_start
    FROM json_to_recordset(CAST(:events AS json)) AS e(id uuid, charge integer)
    JOIN {_CHARGES} USING (charge)
"""
)
"""The recorded events of a batch into the reporter's backlog."""

_TOTAL_VALUES = (
    "VALUES (:subject_id, :period_start, :period_end, :used, :included, :plan_id, :updated_at)"
)


@functools.cache
def add_to_totals(kind: SubjectKind) -> TextClause:
    """Uncapped increments of running totals, for ``executemany``."""
    return text(_add_to_total(kind, _TOTAL_VALUES, capped=False, returning=False))


@functools.cache
def add_to_capped_total(kind: SubjectKind) -> TextualSelect:
    """An increment the cap may refuse; returns the new total, or no row."""
    sql = _add_to_total(kind, _TOTAL_VALUES, capped=True, returning=True)
    return text(sql).columns(used=Integer())


@functools.cache
def lock_total(kind: SubjectKind) -> TextualSelect:
    """Create the subject's total at zero if new, lock it, and return it (capped batches)."""
    column = _SUBJECT_COLUMN[kind]
    sql = f"""
        INSERT INTO usage_records ({column}, period_start, period_end, used, included,
            plan_id, updated_at)
        {_TOTAL_VALUES}
        ON CONFLICT ({column}, period_start) WHERE {column} IS NOT NULL DO UPDATE SET
            used = usage_records.used,
            included = excluded.included,
            plan_id = excluded.plan_id,
            updated_at = excluded.updated_at
        RETURNING used"""
    return text(sql).columns(used=Integer())


add_to_member_shares = text(
    _add_to_member_share(
        "VALUES (:organization_id, :period_start, :user_id, :used, :last_used_at)",
        returning=False,
    )
)
"""Member increments, for ``executemany``."""
