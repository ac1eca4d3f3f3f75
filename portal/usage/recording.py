"""``record_usage``: count one use of the assistant, exactly, under concurrency.

The event row and the running total change in the caller's transaction, with
atomic SQL only: the total is incremented by the database
(``INSERT … ON CONFLICT … DO UPDATE SET used = used + :quantity``), never read,
added in Python and written back. On hard-capped plans the cap is part of that
same statement, so concurrent calls cannot take ``used`` past ``included``.

Locks are always taken in one order (the idempotency key's index entry, then
the subject's total, then the member's share), so concurrent calls queue and
never deadlock.

``record_usage`` commits: when it returns, the usage is durable (or, when it
raises, nothing of it was written). On PostgreSQL, a session with no
transaction in progress sends its one recording statement as a transaction
of its own, so the server commits it as it finishes: one round trip, and the
subject's row lock is released without waiting for the client. That is what
lets one busy subject (a team pool, a hot user) take many calls a second.
"""

from __future__ import annotations

import enum
import functools
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from psycopg.types.json import Json
from sqlalchemy import JSON, Integer, Uuid, bindparam, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from portal.apikeys import ApiKeyRevoked
from portal.models import UsageEvent, UTCDateTime, new_event_id
from portal.periods import as_utc
from portal.plans import DEFAULT_EVENT_TYPE, EVENT_TYPES
from portal.precompiled import execute_on_driver, lone_statement_connection, session_in_transaction
from portal.usage.status import UsageStatus, build_status, status_for
from portal.usage.subjects import (
    EffectivePlan,
    Resolution,
    SubjectKind,
    recent_resolution,
    resolution_guard_parameters,
    resolution_guard_sql,
    resolve_again,
    resolve_effective_plan,
)

MAX_QUANTITY = 10_000
"""Largest quantity one event may carry; more is a caller's bug, not usage."""
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future ``occurred_at`` may be: a caller's clock running fast."""
MAX_BACKDATE = timedelta(days=7)
"""How far in the past ``occurred_at`` may be. A backend retrying for longer
than a week has lost track; Stripe would refuse such usage after 35 days."""
MAX_METADATA_BYTES = 2048


def json_text(value: Any) -> str:
    """``value`` as the JSON text PostgreSQL receives: metadata of single events and
    whole batches alike. orjson writes UUIDs and times natively, in C."""
    return orjson.dumps(value).decode()


def _metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why ``metadata`` cannot be stored, or None.

    It is measured as ``json_text`` writes it: integers must fit in 64 bits
    there, and PostgreSQL's ``json`` type refuses NUL characters and
    non-finite numbers.
    """
    try:
        encoded = json_text(metadata).encode()
    except orjson.JSONEncodeError:
        return "must hold only JSON values, with integers of at most 64 bits"
    if len(encoded) > MAX_METADATA_BYTES:
        return f"must be at most {MAX_METADATA_BYTES} bytes as JSON"
    if b"\\u0000" in encoded:
        return "must not contain NUL characters"
    if _has_non_finite_number(metadata):
        return "must not contain infinite numbers"
    return None


def _has_non_finite_number(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite_number(v) for v in value)
    return False


class InvalidUsage(ValueError):
    """The request to record usage is malformed; ``errors`` maps each field to its problem."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {message}" for field, message in self.errors.items()))


class IdempotencyKeyReused(ValueError):
    """The idempotency key was used before for a different user, type or quantity."""


class PlanKeptChanging(RuntimeError):
    """The user's plan changed under every attempt to record; nothing was recorded."""


class RecordResult(enum.StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"
    """The idempotency key was seen before: nothing new was counted."""
    LIMIT_REACHED = "limit_reached"
    """A hard cap refused the usage: nothing was recorded."""


@dataclass(frozen=True)
class UsageRequest:
    """A validated request to record usage."""

    idempotency_key: str
    event_type: str
    quantity: int
    occurred_at: datetime
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class RecordOutcome:
    result: RecordResult
    event_id: uuid.UUID | None
    """The event counted (for a duplicate, the original one); ``None`` when refused."""
    status: UsageStatus


def validate_usage_request(
    *,
    idempotency_key: object,
    now: datetime,
    event_type: object = DEFAULT_EVENT_TYPE,
    quantity: object = 1,
    occurred_at: object = None,
    metadata: object = None,
) -> UsageRequest:
    """Check every field at once; ``InvalidUsage`` lists all that are wrong."""
    errors: dict[str, str] = {}
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        errors["idempotency_key"] = "is required and must be a non-empty string"
    elif len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        errors["idempotency_key"] = f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
    elif not idempotency_key.isprintable():
        errors["idempotency_key"] = "must contain only printable characters"
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        errors["event_type"] = f"must be one of {', '.join(EVENT_TYPES)}"
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        errors["quantity"] = "must be a whole number"
    elif not 1 <= quantity <= MAX_QUANTITY:
        errors["quantity"] = f"must be from 1 to {MAX_QUANTITY}"
    when = now
    if occurred_at is not None:
        if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
            errors["occurred_at"] = "must be a date and time with a UTC offset"
        elif occurred_at > now + MAX_CLOCK_SKEW:
            errors["occurred_at"] = "must not be in the future"
        elif occurred_at < now - MAX_BACKDATE:
            errors["occurred_at"] = f"must not be more than {MAX_BACKDATE.days} days in the past"
        else:
            when = as_utc(occurred_at)
    if metadata is not None:
        if not isinstance(metadata, dict):
            errors["metadata"] = "must be an object"
        else:
            problem = _metadata_problem(metadata)
            if problem:
                errors["metadata"] = problem
    if errors:
        raise InvalidUsage(errors)
    assert isinstance(idempotency_key, str) and isinstance(event_type, str)
    assert isinstance(quantity, int)
    assert metadata is None or isinstance(metadata, dict)
    return UsageRequest(idempotency_key, event_type, quantity, when, metadata or None)


def record_usage(
    session: Session,
    user: int | str,
    *,
    idempotency_key: object,
    now: datetime,
    event_type: object = DEFAULT_EVENT_TYPE,
    quantity: object = 1,
    occurred_at: object = None,
    metadata: object = None,
) -> RecordOutcome:
    """Record one usage event for a user (id or email) and count it against their quota.

    Commits the session's transaction (see the module's docstring). Raises
    ``InvalidUsage`` for bad input, ``UnknownUser`` for an unknown user and
    ``IdempotencyKeyReused`` when the key belongs to a different usage; in
    each case nothing is written. The same key again returns the original
    event with ``DUPLICATE`` and counts nothing. A refused usage
    (``LIMIT_REACHED``) stores nothing, so its key may be used again later.
    """
    request = validate_usage_request(
        idempotency_key=idempotency_key,
        now=now,
        event_type=event_type,
        quantity=quantity,
        occurred_at=occurred_at,
        metadata=metadata,
    )
    return record_request(session, user, request, now)


MAX_RESOLUTION_ATTEMPTS = 3
"""Attempts to record against a plan that is changing at that very moment."""


def record_request(
    session: Session,
    user: int | str,
    request: UsageRequest,
    now: datetime,
    *,
    api_key_id: int | None = None,
) -> RecordOutcome:
    """``record_usage`` for input already validated; commits the session's transaction.

    On PostgreSQL the plan comes from this process's last resolution of the
    user, checked by the recording statement itself: it records only if the
    resolution query still returns the same row at that moment, and otherwise
    nothing is written and the plan is resolved again. So the plan in force
    when the statement runs always governs, in one round trip.

    With ``api_key_id``, the usage is recorded only while that API key is
    live, checked in the same statement; a revoked one raises
    ``ApiKeyRevoked`` and nothing is written.
    """
    # Changes the caller left pending belong to the transaction this commits.
    session.flush()
    try:
        outcome = _record_until_plan_holds(session, user, request, now, api_key_id)
    except ApiKeyRevoked:
        session.rollback()  # the hard-capped path's transaction, with nothing written
        raise
    # Nothing to commit when the statement was its own transaction and the
    # session never began one (``lone_statement_connection``).
    if session_in_transaction(session):
        session.commit()
    return outcome


def _record_until_plan_holds(
    session: Session, user: int | str, request: UsageRequest, now: datetime, api_key_id: int | None
) -> RecordOutcome:
    if session.get_bind().dialect.name != "postgresql":
        effective = resolve_effective_plan(session, user)
        outcome = _record(session, effective, request, now, None, False, api_key_id)
        assert outcome is not None  # only a guarded statement can find its plan outdated
        return outcome
    resolution = recent_resolution(session, user)
    for _ in range(MAX_RESOLUTION_ATTEMPTS):
        found = _record(session, resolution.plan, request, now, resolution, True, api_key_id)
        if found is not None:
            return found
        resolution = resolve_again(session, user)
    raise PlanKeptChanging(f"the plan of {user!r} changed during each attempt to record usage")


def record_validated(
    session: Session, effective: EffectivePlan, request: UsageRequest, now: datetime
) -> RecordOutcome:
    """``record_usage`` for input already validated and a user already resolved.

    Writes in the caller's transaction and leaves the commit to the caller,
    who may record many events in one transaction (the demo data does).
    """
    outcome = _record(session, effective, request, now, None, False, None)
    assert outcome is not None  # only a guarded statement can find its plan outdated
    return outcome


def _record(
    session: Session,
    effective: EffectivePlan,
    request: UsageRequest,
    now: datetime,
    guard: Resolution | None,
    alone: bool,
    api_key_id: int | None,
) -> RecordOutcome | None:
    """Record under ``effective``; ``None`` when ``guard`` no longer holds (nothing written).

    With ``alone``, PostgreSQL's recording statement may be a transaction of
    its own (``execute_on_driver``), except on a hard-capped plan: a usage
    the cap refuses is taken back by a second statement, so those two need
    the transaction around them. With ``api_key_id``, raises
    ``ApiKeyRevoked`` (nothing written) unless that key is live.
    """
    period = effective.period_at(request.occurred_at)
    subject = effective.subject
    counts = EVENT_TYPES[request.event_type]
    event_id = new_event_id()
    values = {
        "id": event_id,
        "user_id": effective.user_id,
        "organization_id": effective.pool_id,
        "subject_id": subject.id,
        "plan_id": effective.plan.id,
        "event_type": request.event_type,
        "quantity": request.quantity,
        "included": effective.included,
        "idempotency_key": request.idempotency_key,
        "occurred_at": request.occurred_at,
        "recorded_at": now,
        "period_start": period.start,
        "period_end": period.end,
        "metadata": request.metadata,
        "api_key_id": api_key_id,
    }
    bind = session.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        alone = alone and not (counts and effective.plan.is_hard_capped)
        with lone_statement_connection(session, alone, bind) as connection:
            written = _write_in_one_statement(connection, effective, counts, values, guard, alone)
    else:
        written = _write_step_by_step(session.connection(), effective, counts, values)
    if not written.key_live:
        raise ApiKeyRevoked(f"API key {api_key_id} is no longer live; nothing was recorded")
    if not written.plan_in_force:
        return None

    if not written.inserted:
        return _original_outcome(session, effective, request, now)
    if not counts:
        status = status_for(session, effective, period, now)
        return RecordOutcome(RecordResult.CREATED, event_id, status)
    if written.used is None:
        # The cap refused it: take back the event this transaction just wrote,
        # so nothing of the refused usage remains.
        statements = recording_statements(dialect)
        session.connection().execute(statements.delete_event, {"event_ids": [event_id]})
        status = status_for(session, effective, period, now)
        return RecordOutcome(RecordResult.LIMIT_REACHED, None, status)
    status = build_status(effective, period, written.used, written.member_used, now)
    return RecordOutcome(RecordResult.CREATED, event_id, status)


@dataclass(frozen=True)
class _Written:
    inserted: bool
    """False when the idempotency key was already recorded: nothing was written."""
    used: int | None
    """The subject's new total; ``None`` when not counted or refused by the cap."""
    member_used: int | None
    plan_in_force: bool = True
    """False when a guarded statement found the plan changed: nothing was written."""
    key_live: bool = True
    """False when the API key the write needs was revoked: nothing was written."""


def _write_step_by_step(
    connection: Connection, effective: EffectivePlan, counts: bool, values: dict[str, Any]
) -> _Written:
    """Event, total and member share as three statements (SQLite)."""
    statements = recording_statements(connection.dialect.name)
    if values["api_key_id"] is not None:
        live = connection.execute(statements.live_api_key, {"api_key_id": values["api_key_id"]})
        if live.first() is None:
            return _Written(False, None, None, key_live=False)
    event_values = {name: values[name] for name in EVENT_COLUMNS}
    if connection.execute(statements.insert_event, event_values).scalar_one_or_none() is None:
        return _Written(False, None, None)
    queue_values = {name: values[name] for name in BACKLOG_COLUMNS}
    if not counts:
        connection.execute(statements.enqueue_event, queue_values)
        return _Written(True, None, None)
    capped = effective.plan.is_hard_capped
    if capped and values["quantity"] > values["included"]:
        return _Written(True, None, None)
    kind = effective.subject.kind
    used = connection.execute(
        statements.add_to_total[(kind, capped)],
        {
            "subject_id": values["subject_id"],
            "period_start": values["period_start"],
            "period_end": values["period_end"],
            "used": values["quantity"],
            "included": values["included"],
            "plan_id": values["plan_id"],
            "updated_at": values["recorded_at"],
        },
    ).scalar_one_or_none()
    if used is not None:
        connection.execute(statements.enqueue_event, queue_values)  # admitted: billable
    if used is None or kind is not SubjectKind.ORGANIZATION:
        return _Written(True, used, None)
    member_used = connection.execute(
        statements.add_to_member_share,
        {
            "organization_id": values["subject_id"],
            "period_start": values["period_start"],
            "user_id": values["user_id"],
            "used": values["quantity"],
            "last_used_at": values["occurred_at"],
        },
    ).scalar_one()
    return _Written(True, used, member_used)


def _write_in_one_statement(
    connection: Connection,
    effective: EffectivePlan,
    counts: bool,
    values: dict[str, Any],
    guard: Resolution | None,
    alone: bool,
) -> _Written:
    """Event, total and member share in one round trip (PostgreSQL).

    This is the hot path of every recorded suggestion, so it runs as one
    statement straight on the driver's cursor: SQLAlchemy's per-execution
    work would cost more CPU than the database does.
    """
    sql = _one_statement_sql(
        effective.subject.kind,
        effective.plan.is_hard_capped,
        counts,
        guard.lookup if guard is not None else None,
        values["api_key_id"] is not None,
    )
    metadata = values["metadata"]
    driver_values = {**values, "metadata": Json(metadata, dumps=json_text) if metadata else None}
    if guard is not None:
        driver_values |= resolution_guard_sql(guard.lookup)[1]
        driver_values |= resolution_guard_parameters(guard)
    # The final SELECT always yields exactly one row.
    ((plan_in_force, key_live, event_id, used, member_used),) = execute_on_driver(
        connection, sql, driver_values, alone=alone
    )
    return _Written(event_id is not None, used, member_used, plan_in_force, key_live)


BACKLOG_COLUMNS = ("id", "organization_id", "user_id", "period_start")
"""What the reporter's backlog (``usage_report_backlog``) keeps of a recorded event."""
ENQUEUE = "INSERT INTO usage_report_backlog (event_id, organization_id, user_id, period_start)"
"""Puts recorded events in the reporter's backlog: every event, once it is in."""

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


@functools.cache
def _one_statement_sql(
    kind: SubjectKind, capped: bool, counts: bool, guard_lookup: str | None, key_guard: bool
) -> str:
    """PostgreSQL's recording statement: data-modifying CTEs, in psycopg's parameter style.

    ``total`` only adds when ``event`` inserted (a repeated key counts
    nothing); ``share`` only when ``total`` added (a refused usage counts
    nowhere); ``queued`` puts the event in the reporter's backlog once it
    is in (and, if it counts, admitted). Locks come in the same order as
    everywhere else: key, total, share. With ``guard_lookup`` (``"id"`` or
    ``"email"``), ``event`` only inserts while the resolution query still
    returns the row the caller planned with (``resolution_guard_sql``); the
    first column says whether it did. With ``key_guard``, only while the API
    key ``api_key_id`` is live; the second column says whether it was.
    """
    column = "organization_id" if kind is SubjectKind.ORGANIZATION else "user_id"
    columns = ", ".join(EVENT_COLUMNS)
    placeholders = ", ".join(f"%({name})s" for name in EVENT_COLUMNS)
    parts = []
    guards = []
    in_force, key_live = "TRUE", "TRUE"
    if guard_lookup is not None:
        parts.append(resolution_guard_sql(guard_lookup)[0])
        guards.append("plan_in_force")
        in_force = "EXISTS (SELECT FROM plan_in_force)"
    if key_guard:
        parts.append(f"live_key AS ({LIVE_API_KEY_SQL.format(api_key_id='%(api_key_id)s')})")
        guards.append("live_key")
        key_live = "EXISTS (SELECT FROM live_key)"
    if guards:
        event_source = f"SELECT {placeholders} FROM {', '.join(guards)}"
    else:
        event_source = f"VALUES ({placeholders})"
    parts.append(
        f"""event AS (
            INSERT INTO usage_events ({columns}) {event_source}
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
        )"""
    )
    selected = [in_force, key_live, "(SELECT id FROM event)", "NULL::integer", "NULL::integer"]
    if counts:
        admit = "WHERE %(quantity)s <= %(included)s" if capped else ""
        guard = "WHERE usage_records.used + excluded.used <= excluded.included" if capped else ""
        parts.append(
            f"""total AS (
            INSERT INTO usage_records ({column}, period_start, period_end, used, included,
                plan_id, updated_at)
            SELECT %(subject_id)s, %(period_start)s, %(period_end)s, %(quantity)s,
                %(included)s, %(plan_id)s, %(recorded_at)s
            FROM event {admit}
            ON CONFLICT ({column}, period_start) WHERE {column} IS NOT NULL DO UPDATE SET
                used = usage_records.used + excluded.used,
                included = excluded.included,
                plan_id = excluded.plan_id,
                updated_at = excluded.updated_at
            {guard}
            RETURNING used
        )"""
        )
        selected[3] = "(SELECT used FROM total)"
        if kind is SubjectKind.ORGANIZATION:
            parts.append(
                """share AS (
            INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
            SELECT %(subject_id)s, %(period_start)s, %(user_id)s, %(quantity)s, %(occurred_at)s
            FROM total
            ON CONFLICT (organization_id, period_start, user_id) DO UPDATE SET
                used = member_usage.used + excluded.used,
                last_used_at = GREATEST(member_usage.last_used_at, excluded.last_used_at)
            RETURNING used
        )"""
            )
            selected[4] = "(SELECT used FROM share)"
    admitted = "event, total" if counts else "event"
    parts.append(
        f"queued AS ({ENQUEUE} SELECT event.id, %(organization_id)s, %(user_id)s, "
        f"%(period_start)s FROM {admitted})"
    )
    return f"WITH {', '.join(parts)} SELECT {', '.join(selected)}"


LIVE_API_KEY_SQL = "SELECT 1 FROM api_keys WHERE id = {api_key_id} AND revoked_at IS NULL"
"""A row while the API key is live: the same test for both engines' recording."""


@dataclass(frozen=True)
class RecordingStatements:
    """The SQL that records usage, for one dialect. Shared by single and batch recording."""

    insert_event: Any
    add_to_total: dict[tuple[SubjectKind, bool], Any]
    """By (subject kind, hard-capped); returns the new total, or nothing if the cap refuses."""
    add_to_totals: dict[SubjectKind, Any]
    """Uncapped increments without a result, for ``executemany``."""
    lock_total: dict[SubjectKind, Any]
    """Create or lock the subject's total for the period and return it (batches on capped plans)."""
    add_to_member_share: Any
    add_to_member_shares: Any
    """Member increments without a result, for ``executemany``."""
    delete_event: Any
    live_api_key: Any
    enqueue_event: Any


def _total_sql(column: str, *, increment: str, guard: str, returning: bool) -> str:
    return f"""
        INSERT INTO usage_records ({column}, period_start, period_end, used, included,
            plan_id, updated_at)
        VALUES (:subject_id, :period_start, :period_end, :used, :included, :plan_id, :updated_at)
        ON CONFLICT ({column}, period_start) WHERE {column} IS NOT NULL DO UPDATE SET
            used = {increment},
            included = excluded.included,
            plan_id = excluded.plan_id,
            updated_at = excluded.updated_at
        {guard}
        {"RETURNING used" if returning else ""}
        """


def _member_share_sql(greatest: str, *, returning: bool) -> str:
    return f"""
        INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
        VALUES (:organization_id, :period_start, :user_id, :used, :last_used_at)
        ON CONFLICT (organization_id, period_start, user_id) DO UPDATE SET
            used = member_usage.used + excluded.used,
            last_used_at = {greatest}(member_usage.last_used_at, excluded.last_used_at)
        {"RETURNING used" if returning else ""}
        """


@functools.cache
def recording_statements(dialect: str) -> RecordingStatements:
    """The recording statements for one SQL dialect, written once as SQL.

    They run on every recorded event. SQLAlchemy does not cache compiled
    ``ON CONFLICT`` constructs, so they are plain SQL with typed parameters;
    PostgreSQL and SQLite share the syntax except for the two-argument
    maximum (GREATEST and MAX).
    """
    if dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"recording usage is not supported on {dialect}")
    greatest = "GREATEST" if dialect == "postgresql" else "MAX"
    when = UTCDateTime()

    def timed(sql: str, *names: str) -> Any:
        return text(sql).bindparams(*(bindparam(name, type_=when) for name in names))

    insert_event = (
        timed(
            """
            INSERT INTO usage_events (id, user_id, organization_id, plan_id, event_type,
                quantity, idempotency_key, occurred_at, recorded_at, period_start, period_end,
                metadata)
            VALUES (:id, :user_id, :organization_id, :plan_id, :event_type,
                :quantity, :idempotency_key, :occurred_at, :recorded_at, :period_start,
                :period_end, :metadata)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """,
            "occurred_at",
            "recorded_at",
            "period_start",
            "period_end",
        )
        .bindparams(
            bindparam("id", type_=Uuid()), bindparam("metadata", type_=JSON(none_as_null=True))
        )
        .columns(id=Uuid())
    )

    subject_columns = {SubjectKind.USER: "user_id", SubjectKind.ORGANIZATION: "organization_id"}
    period_times = ("period_start", "period_end", "updated_at")
    add = "usage_records.used + excluded.used"
    # The hard cap lives in the statement itself, so the row lock that
    # serializes concurrent increments also enforces it. The plan's current
    # allowance wins: seats bought mid-period count at once.
    cap = "WHERE usage_records.used + excluded.used <= excluded.included"
    add_to_total = {
        (kind, capped): timed(
            _total_sql(column, increment=add, guard=cap if capped else "", returning=True),
            *period_times,
        ).columns(used=Integer())
        for kind, column in subject_columns.items()
        for capped in (False, True)
    }
    add_to_totals = {
        kind: timed(_total_sql(column, increment=add, guard="", returning=False), *period_times)
        for kind, column in subject_columns.items()
    }
    lock_total = {
        kind: timed(
            _total_sql(column, increment="usage_records.used", guard="", returning=True),
            *period_times,
        ).columns(used=Integer())
        for kind, column in subject_columns.items()
    }
    add_to_member_share = timed(
        _member_share_sql(greatest, returning=True), "period_start", "last_used_at"
    ).columns(used=Integer())
    add_to_member_shares = timed(
        _member_share_sql(greatest, returning=False), "period_start", "last_used_at"
    )
    delete_event = text("DELETE FROM usage_events WHERE id IN :event_ids").bindparams(
        bindparam("event_ids", type_=Uuid(), expanding=True)
    )
    live_api_key = text(LIVE_API_KEY_SQL.format(api_key_id=":api_key_id"))
    enqueue_event = timed(
        f"{ENQUEUE} VALUES (:id, :organization_id, :user_id, :period_start)", "period_start"
    ).bindparams(bindparam("id", type_=Uuid()))
    return RecordingStatements(
        insert_event,
        add_to_total,
        add_to_totals,
        lock_total,
        add_to_member_share,
        add_to_member_shares,
        delete_event,
        live_api_key,
        enqueue_event,
    )


def _original_outcome(
    session: Session, effective: EffectivePlan, request: UsageRequest, now: datetime
) -> RecordOutcome:
    original = session.execute(
        select(UsageEvent).where(UsageEvent.idempotency_key == request.idempotency_key)
    ).scalar_one()
    if (original.user_id, original.event_type, original.quantity) != (
        effective.user_id,
        request.event_type,
        request.quantity,
    ):
        raise IdempotencyKeyReused(
            f"idempotency key {request.idempotency_key!r} was used for a different usage "
            f"(event {original.id})"
        )
    period = effective.period_at(original.occurred_at)
    status = status_for(session, effective, period, now)
    return RecordOutcome(RecordResult.DUPLICATE, original.id, status)
