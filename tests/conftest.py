"""Fixtures: every test that touches the database runs on PostgreSQL.

The server is the one ``TEST_DATABASE_URL`` names (CI sets it to the machine's
PostgreSQL), else the embedded development server (``portal.devdb``), started
for the run. Each test process gets a database of its own, built by the
project's migrations (so every test also exercises them) and dropped at the
end; each test leaves its tables empty for the next.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal import create_app, devdb
from portal.config import normalize_database_url
from portal.extensions import db
from tests.factories import NOW, FrozenClock

os.environ["PORTAL_ENV"] = "test"
ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = str(ROOT / "migrations")


def server_url() -> str:
    """The PostgreSQL server the tests create their databases on."""
    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    return normalize_database_url(given or devdb.server_url(ROOT / "instance"))


def _migrated_app(url: str) -> Flask:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade(directory=MIGRATIONS)
        db.engine.dispose()
    return app


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database of its own, dropped afterwards."""
    admin_url = server_url()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"{prefix}_{worker}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated, empty database for this test process, dropped at the end."""
    with scratch_database("portal_test") as url:
        _migrated_app(url)
        yield url


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """The portal's clock, set to ``NOW`` for every test: none reads the wall clock."""
    frozen = FrozenClock(NOW)
    monkeypatch.setattr(portal_clock, "now", frozen)
    return frozen


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
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def session(app: Flask) -> Session:
    """The app's database session, as views and commands use it."""
    return db.session()
