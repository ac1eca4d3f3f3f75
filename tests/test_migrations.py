from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import inspect

from portal.extensions import db


def test_migrations_build_exactly_the_models(app: Flask) -> None:
    # The test database was built by running the migrations; autogenerate
    # must find nothing left to do.
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_tables_have_the_names_reports_rely_on(app: Flask) -> None:
    names = set(inspect(db.engine).get_table_names())
    assert {
        "organizations",
        "users",
        "memberships",
        "user_subscriptions",
        "usage_events",
        "usage_records",
    } <= names
