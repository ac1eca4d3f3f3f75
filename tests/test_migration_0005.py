"""Migration 0005 carries every usage event's reporting state over, both ways.

Revision 0004 kept it on the events; 0005 keeps it in the backlog, the
batches and the skips. The test builds a 0004 database holding an event in
every state, upgrades it, checks where each event went, then downgrades and
checks the events say what they said before.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import MetaData, null, select, text
from sqlalchemy.engine import Connection

from portal import create_app
from portal.extensions import db
from portal.models import UsageReportBatch, UsageReportSkip, usage_report_backlog
from tests.billing.helpers import report_states
from tests.conftest import MIGRATIONS, scratch_database

T = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EVENTS = {
    # name: (report_status, batch, skip reason, reported)
    "waiting": ("pending", None, None, False),
    "claimed": ("pending", "pending batch", None, False),
    "reported": ("batched", "sent batch", None, True),
    "also reported": ("batched", "sent batch", None, True),
    "refused": ("batched", "failed batch", None, False),
    "free": ("skipped", None, "free_plan", False),
    "reported long ago": ("skipped", None, "already_reported", True),
    "reported elsewhere": ("pending", None, None, True),
}
"""An event in every state revision 0004 knew."""
BATCHES = {"pending batch": "pending", "sent batch": "sent", "failed batch": "failed"}


@pytest.fixture
def blank_database() -> Iterator[str]:
    """An empty database of its own, for migrating step by step."""
    with scratch_database("portal_migrating") as url:
        yield url


def _fill_revision_0004(conn: Connection) -> dict[str, uuid.UUID]:
    tables = MetaData()
    tables.reflect(conn, only=["users", "usage_events", "usage_report_batches"])
    users, events, batches = (
        tables.tables[name] for name in ("users", "usage_events", "usage_report_batches")
    )
    conn.execute(
        users.insert(),
        {"id": 1, "email": "a@example.com", "display_name": "A", "created_at": T},
    )
    ids = {name: uuid.uuid4() for name in EVENTS}
    batch_ids = {}
    for n, (name, status) in enumerate(BATCHES.items(), start=1):
        listed = [ids[e] for e, state in EVENTS.items() if state[1] == name]
        batch_ids[name] = n
        conn.execute(
            batches.insert(),
            {
                "id": n,
                "identifier": f"aiu_{n}",
                "stripe_customer_id": "cus_1",
                "event_name": "ai_suggestion",
                "period_start": T,
                "period_end": T + timedelta(days=30),
                "value": len(listed),
                "event_count": len(listed),
                "meter_timestamp": T,
                "status": status,
                "attempts": 1,
                "created_at": T,
                "queued_at": T,
                "sent_at": T + timedelta(hours=1) if status == "sent" else None,
                # 0004: only a pending batch lists its events; the others hold SQL NULL.
                "event_ids": [str(i) for i in listed] if status == "pending" else null(),
            },
        )
    for n, (name, (status, batch, reason, reported)) in enumerate(EVENTS.items()):
        conn.execute(
            events.insert(),
            {
                "id": ids[name],
                "user_id": 1,
                "organization_id": None,
                "plan_id": "free" if reason == "free_plan" else "pro",
                "event_type": "suggestion",
                "quantity": 1,
                "idempotency_key": f"key-{n}",
                "occurred_at": T,
                "recorded_at": T,
                "period_start": T,
                "period_end": T + timedelta(days=30),
                "stripe_reported_at": T + timedelta(hours=1) if reported else None,
                "report_status": status,
                "report_batch_id": batch_ids[batch] if status == "batched" else None,
                "report_skip_reason": reason,
            },
        )
    return ids


def _revision_0004_states(conn: Connection) -> dict[uuid.UUID, tuple[Any, ...]]:
    rows = conn.execute(
        text(
            "SELECT id, report_status, report_batch_id, report_skip_reason, "
            "stripe_reported_at IS NOT NULL FROM usage_events"
        )
    )
    return {uuid.UUID(str(row[0])): tuple(row[1:]) for row in rows}


def test_every_events_reporting_state_survives_the_upgrade_and_the_downgrade(
    blank_database: str,
) -> None:
    app: Flask = create_app({"SQLALCHEMY_DATABASE_URI": blank_database, "TESTING": True})
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0004")
        with db.engine.begin() as conn:
            ids = _fill_revision_0004(conn)
            before = _revision_0004_states(conn)
        db.engine.dispose()

        upgrade(directory=MIGRATIONS)

        states = report_states(db.session)
        assert {name: states[event_id] for name, event_id in ids.items()} == {
            "waiting": "pending",
            "claimed": "claimed",
            "reported": "reported",
            "also reported": "reported",
            "refused": "failed",
            "free": "skipped:free_plan",
            "reported long ago": "skipped:already_reported",
            # The 0004 reporter skipped these when it came to them: never sent again.
            "reported elsewhere": "skipped:already_reported",
        }
        sent = db.session.scalars(
            select(UsageReportBatch).where(UsageReportBatch.status == "sent")
        ).one()
        assert sent.sent_at is not None and len(sent.event_ids) == sent.event_count == 2
        skips = db.session.scalars(select(UsageReportSkip).order_by(UsageReportSkip.reason))
        assert [(s.reason, s.event_count, s.value) for s in skips] == [
            ("already_reported", 2, 2),
            ("free_plan", 1, 1),
        ]
        waiting = db.session.execute(select(usage_report_backlog)).one()
        assert (uuid.UUID(str(waiting.event_id)), waiting.user_id) == (ids["waiting"], 1)
        db.session.remove()
        db.engine.dispose()

        downgrade(directory=MIGRATIONS, revision="0004")

        with db.engine.connect() as conn:
            # As 0004 left them, but for the event reported elsewhere: skipped
            # as already reported, as the 0004 reporter itself would have.
            after = _revision_0004_states(conn)
            reported_elsewhere = ids["reported elsewhere"]
            assert after.pop(reported_elsewhere) == ("skipped", None, "already_reported", True)
            before.pop(reported_elsewhere)
            assert after == before
            listed = conn.execute(
                text("SELECT status, event_ids IS NOT NULL FROM usage_report_batches ORDER BY id")
            ).all()
        assert [tuple(row) for row in listed] == [
            ("pending", True),
            ("sent", False),
            ("failed", False),
        ]
        db.engine.dispose()
