"""Recording many usage events in one transaction (the API's batch ingestion).

Each event gets the same outcome it would get alone: ``created``,
``duplicate``, ``limit_reached`` or ``invalid``. The work is set-based: one
statement inserts every event, totals are incremented once per billing subject
and period with the batch's sum, and member shares once per member.

Hard caps stay exact within and across batches: a capped subject's total row
is locked first (created at zero if new) and the batch's events are admitted in
order while they fit; the admitted sum is then added by the same guarded
statement single recording uses. Locks are taken in a fixed order
(idempotency keys sorted, then totals, then member shares) so concurrent
batches queue instead of deadlocking.
"""

from __future__ import annotations

import enum
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from portal import encoding
from portal.accounts import normalize_email
from portal.models import UsageEvent, new_event_ids
from portal.periods import BillingPeriod
from portal.plans import EVENT_TYPES
from portal.usage import store
from portal.usage.requests import UsageRequest
from portal.usage.subjects import EffectivePlan, SubjectKind, resolve_effective_plans

MAX_BATCH_SIZE = 1000


class BatchResult(enum.StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"
    LIMIT_REACHED = "limit_reached"
    INVALID = "invalid"
    USER_DISABLED = "user_disabled"
    """An operator disabled the user: nothing was recorded."""


@dataclass(frozen=True)
class BatchItem:
    user_email: str
    request: UsageRequest


@dataclass(frozen=True)
class BatchItemResult:
    result: BatchResult
    event_id: uuid.UUID | None = None
    errors: dict[str, str] | None = None

    @classmethod
    def invalid(cls, errors: dict[str, str]) -> BatchItemResult:
        return cls(BatchResult.INVALID, None, errors)


@dataclass
class _Pending:
    index: int
    effective: EffectivePlan
    request: UsageRequest
    period: BillingPeriod
    event_id: uuid.UUID
    pool_id: int | None
    """``effective.pool_id``, asked once per event rather than at every use."""


def record_usage_batch(
    session: Session, items: Sequence[BatchItem], now: datetime
) -> list[BatchItemResult]:
    """Record ``items`` (already validated) and return one result per item, in order.

    Commits, as ``record_usage`` does: when it returns, every recorded item
    is durable. Unknown users and idempotency keys reused for other usage
    come back as ``invalid`` with the field named.
    """
    if len(items) > MAX_BATCH_SIZE:
        raise ValueError(f"a batch holds at most {MAX_BATCH_SIZE} events, got {len(items)}")
    results: list[BatchItemResult | None] = [None] * len(items)
    plans = resolve_effective_plans(session, (item.user_email for item in items), now)
    first_with_key: dict[str, int] = {}
    pending: list[_Pending] = []
    event_ids = new_event_ids(len(items))
    for index, item in enumerate(items):
        effective = plans.get(normalize_email(item.user_email))
        if effective is None:
            results[index] = BatchItemResult.invalid({"user_email": "no such user"})
            continue
        if effective.disabled:
            results[index] = BatchItemResult(BatchResult.USER_DISABLED)
            continue
        key = item.request.idempotency_key
        if key in first_with_key:
            continue  # settled below from the first item with this key
        first_with_key[key] = index
        period = effective.period_at(item.request.occurred_at)
        pending.append(
            _Pending(index, effective, item.request, period, event_ids[index], effective.pool_id)
        )

    connection = session.connection()
    charges = _Charges()  # one numbering for the batch's statements
    inserted = _insert_events(connection, pending, now, charges)
    fresh = [p for p in pending if p.event_id in inserted]
    _settle_existing_keys(connection, [p for p in pending if p.event_id not in inserted], results)

    refused = _add_to_totals(
        connection, [p for p in fresh if EVENT_TYPES[p.request.event_type]], now
    )
    if refused:
        connection.execute(store.delete_events, {"event_ids": [p.event_id for p in refused]})
    refused_ids = {p.event_id for p in refused}
    counted = [p for p in fresh if p.event_id not in refused_ids]
    _add_to_member_shares(connection, [p for p in counted if EVENT_TYPES[p.request.event_type]])
    _enqueue(connection, counted, charges)
    for p in fresh:
        if p.event_id in refused_ids:
            results[p.index] = BatchItemResult(BatchResult.LIMIT_REACHED)
        else:
            results[p.index] = BatchItemResult(BatchResult.CREATED, p.event_id)

    # Later items repeating a key take the first item's outcome, as a retry would.
    for index, item in enumerate(items):
        if results[index] is not None:
            continue
        first = items[first_with_key[item.request.idempotency_key]]
        outcome = results[first_with_key[item.request.idempotency_key]]
        assert outcome is not None
        if _same_usage(first, item):
            again = BatchResult.DUPLICATE if outcome.event_id else outcome.result
            results[index] = BatchItemResult(again, outcome.event_id, outcome.errors)
        else:
            results[index] = BatchItemResult.invalid(
                {"idempotency_key": "was used for a different usage in this batch"}
            )
    session.commit()
    return [r for r in results if r is not None]


def _same_usage(first: BatchItem, other: BatchItem) -> bool:
    return (
        normalize_email(first.user_email) == normalize_email(other.user_email)
        and first.request.event_type == other.request.event_type
        and first.request.quantity == other.request.quantity
    )


def _insert_events(
    connection: Connection, pending: list[_Pending], now: datetime, charges: _Charges
) -> set[uuid.UUID]:
    """Insert the events in key order; the ids of those whose idempotency key was new."""
    if not pending:
        return set()
    events = [
        {
            "id": p.event_id,
            "charge": charges.number(p),
            "event_type": p.request.event_type,
            "quantity": p.request.quantity,
            "idempotency_key": p.request.idempotency_key,
            # Most events happen as they are recorded: null stands for "now".
            "occurred_at": None if p.request.occurred_at == now else p.request.occurred_at,
            "metadata": p.request.metadata,
        }
        for p in sorted(pending, key=lambda p: p.request.idempotency_key)
    ]
    parameters = {"events": encoding.dumps(events), "charges": charges.json(), "now": now}
    return set(connection.execute(store.insert_events, parameters).scalars())


class _Charges:
    """The distinct (user, plan, period) a batch's events are charged to, numbered."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._numbers: dict[tuple[int, datetime], int] = {}
        self._json: str | None = None

    def number(self, p: _Pending) -> int:
        key = (p.effective.user_id, p.period.start)
        number = self._numbers.get(key)
        if number is None:
            number = self._numbers[key] = len(self.rows)
            self._json = None
            self.rows.append(
                {
                    "charge": number,
                    "user_id": p.effective.user_id,
                    "organization_id": p.pool_id,
                    "plan_id": p.effective.plan.id,
                    "period_start": p.period.start,
                    "period_end": p.period.end,
                }
            )
        return number

    def json(self) -> str:
        """The rows as the ``charges`` parameter; written once while no charge is added."""
        if self._json is None:
            self._json = encoding.dumps(self.rows)
        return self._json


def _enqueue(connection: Connection, recorded: list[_Pending], charges: _Charges) -> None:
    """Put the recorded events in the reporter's backlog (``usage_report_backlog``)."""
    if not recorded:
        return
    events = [{"id": p.event_id, "charge": charges.number(p)} for p in recorded]
    connection.execute(
        store.enqueue_events, {"events": encoding.dumps(events), "charges": charges.json()}
    )


def _settle_existing_keys(
    connection: Connection, repeats: list[_Pending], results: list[BatchItemResult | None]
) -> None:
    """Items whose key an earlier request used: duplicates, or invalid if the usage differs."""
    if not repeats:
        return
    originals = {
        row.idempotency_key: row
        for row in connection.execute(
            select(
                UsageEvent.id,
                UsageEvent.idempotency_key,
                UsageEvent.user_id,
                UsageEvent.event_type,
                UsageEvent.quantity,
            ).where(UsageEvent.idempotency_key.in_([p.request.idempotency_key for p in repeats]))
        )
    }
    for p in repeats:
        original = originals[p.request.idempotency_key]
        if (original.user_id, original.event_type, original.quantity) == (
            p.effective.user_id,
            p.request.event_type,
            p.request.quantity,
        ):
            results[p.index] = BatchItemResult(BatchResult.DUPLICATE, original.id)
        else:
            results[p.index] = BatchItemResult.invalid(
                {"idempotency_key": f"was used for a different usage (event {original.id})"}
            )


def _add_to_totals(
    connection: Connection, counted: list[_Pending], now: datetime
) -> list[_Pending]:
    """Add each subject's and period's sum to its total; the events a hard cap refused."""
    groups: dict[tuple[str, int, datetime], list[_Pending]] = defaultdict(list)
    for p in counted:
        subject = p.effective.subject
        groups[(str(subject.kind), subject.id, p.period.start)].append(p)

    def params(group: list[_Pending], used: int) -> dict[str, Any]:
        first = group[0]
        return {
            "subject_id": first.effective.subject.id,
            "period_start": first.period.start,
            "period_end": first.period.end,
            "used": used,
            "included": first.effective.included,
            "plan_id": first.effective.plan.id,
            "updated_at": now,
        }

    refused: list[_Pending] = []
    uncapped: dict[SubjectKind, list[dict[str, Any]]] = defaultdict(list)
    capped_groups = []
    for key in sorted(groups):
        group = groups[key]
        if group[0].effective.plan.is_hard_capped:
            capped_groups.append(group)
        else:
            uncapped[group[0].effective.subject.kind].append(
                params(group, sum(p.request.quantity for p in group))
            )
    for kind in sorted(uncapped):
        connection.execute(store.add_to_totals(kind), uncapped[kind])

    for group in capped_groups:
        kind = group[0].effective.subject.kind
        used = connection.execute(store.lock_total(kind), params(group, 0)).scalar_one()
        room = group[0].effective.included - used
        admitted = 0
        for p in group:
            if p.request.quantity <= room - admitted:
                admitted += p.request.quantity
            else:
                refused.append(p)
        if admitted:
            total = connection.execute(
                store.add_to_capped_total(kind), params(group, admitted)
            ).scalar_one_or_none()
            if total is None:  # impossible while the row is locked; never over-count
                raise RuntimeError(
                    f"hard cap refused a locked batch for {group[0].effective.subject}"
                )
    return refused


def _add_to_member_shares(connection: Connection, counted: list[_Pending]) -> None:
    shares: dict[tuple[int, datetime, int], tuple[int, datetime]] = {}
    for p in counted:
        org_id = p.pool_id
        if org_id is None:
            continue
        key = (org_id, p.period.start, p.effective.user_id)
        used, last = shares.get(key, (0, p.request.occurred_at))
        shares[key] = (used + p.request.quantity, max(last, p.request.occurred_at))
    if not shares:
        return
    connection.execute(
        store.add_to_member_shares,
        [
            {
                "organization_id": org_id,
                "period_start": period_start,
                "user_id": user_id,
                "used": used,
                "last_used_at": last,
            }
            for (org_id, period_start, user_id), (used, last) in sorted(shares.items())
        ],
    )
