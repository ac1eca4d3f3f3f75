"""Migration 0011 builds the daily chart's indexes concurrently, and is its own repair.

``CREATE INDEX CONCURRENTLY`` cannot run in a transaction, and one that fails
leaves an invalid index of the same name behind: running the upgrade again
must replace it, not keep it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from portal import create_app
from portal.extensions import db
from tests.conftest import MIGRATIONS, scratch_database

INDEXES = {
    "ix_usage_events_pool_day": (
        "(organization_id, period_start, user_id) WHERE (organization_id IS NOT NULL)"
    ),
    "ix_usage_events_user_day": ("(user_id, period_start) WHERE (organization_id IS NULL)"),
}


@pytest.fixture
def blank_database() -> Iterator[str]:
    with scratch_database("portal_migrating") as url:
        yield url


def daily_indexes() -> dict[str, tuple[str, bool]]:
    """The daily chart's indexes on ``usage_events``: definition (from the columns on) and
    whether PostgreSQL may use it."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_get_indexdef(c.oid), i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = 'usage_events'::regclass AND c.relname LIKE '%\\_day'"
            )
        ).all()
    db.engine.dispose()
    return {name: (definition.split(" USING btree ")[1], valid) for name, definition, valid in rows}


def test_the_indexes_are_built_outside_a_transaction_and_replace_a_broken_build(
    blank_database: str,
) -> None:
    app: Flask = create_app({"SQLALCHEMY_DATABASE_URI": blank_database, "TESTING": True})
    expected = {name: (definition, True) for name, definition in INDEXES.items()}
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0010")
        assert daily_indexes() == {}

        upgrade(directory=MIGRATIONS)
        assert daily_indexes() == expected

        downgrade(directory=MIGRATIONS, revision="0010")
        assert daily_indexes() == {}

        # What a failed concurrent build leaves: an index by that name that is not right.
        with db.engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_usage_events_pool_day ON usage_events (id)"))
        db.engine.dispose()
        upgrade(directory=MIGRATIONS)
        assert daily_indexes() == expected
