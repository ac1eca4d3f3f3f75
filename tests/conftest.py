"""Fixtures: every test that touches the database runs on SQLite and on PostgreSQL.

Each engine gets a database of its own for the test session, built by the
project's migrations (so every test also exercises them) and dropped at the
end; each test leaves its tables empty for the next.

PostgreSQL runs when ``TEST_DATABASE_URL`` names a server the tests may
create databases on. When it is set but unreachable the suite errors; in CI
(``CI=true``) a missing ``TEST_DATABASE_URL`` is an error too, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from portal import create_app
from portal.config import normalize_database_url
from portal.extensions import db

os.environ["PORTAL_ENV"] = "test"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "").strip()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MIGRATIONS = str(Path(__file__).resolve().parent.parent / "migrations")


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI and not TEST_DATABASE_URL:
        raise pytest.UsageError(
            "CI=true but TEST_DATABASE_URL is not set: PostgreSQL would not be tested"
        )


ENGINES = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not TEST_DATABASE_URL, reason="TEST_DATABASE_URL is not set (PostgreSQL not configured)"
        ),
    ),
]


def _migrated_app(url: str) -> Flask:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade(directory=MIGRATIONS)
        db.engine.dispose()
    return app


@pytest.fixture(scope="session", params=ENGINES)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database on one engine for the whole test session."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.db'}"
        _migrated_app(url)
        yield url
        return
    admin_url = normalize_database_url(TEST_DATABASE_URL)
    name = f"portal_test_{worker}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        _migrated_app(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    """The portal on a clean database; tables are emptied after the test."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})
    with app.app_context():
        yield app
        db.session.remove()
        _empty_tables()
        db.engine.dispose()


def _empty_tables() -> None:
    tables = [t.name for t in reversed(db.metadata.sorted_tables)]
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def session(app: Flask) -> Session:
    """The app's database session, as views and commands use it."""
    return db.session  # type: ignore[return-value]


@pytest.fixture
def engine_name(app: Flask) -> str:
    return db.engine.dialect.name
