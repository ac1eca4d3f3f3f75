"""A pooled connection the database dropped is replaced before a request uses it."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from portal import database
from portal.extensions import db


def test_a_connection_dropped_while_idle_is_replaced(
    app: Flask, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    assert client.get("/api/v1/users/nobody@example.com/usage").status_code == 401
    db.session.remove()  # its connection goes back to the pool, now idle
    server_pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    db.session.remove()

    # The database restarts, say: every connection of the portal is closed.
    admin = create_engine(database_url)
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": server_pid})
    admin.dispose()

    monkeypatch.setattr(database, "IDLE_BEFORE_PING_SECONDS", 0.0)
    # Answers as usual (401: no key) instead of failing on the dead connection.
    assert client.get("/api/v1/users/nobody@example.com/usage").status_code == 401
    assert db.session.execute(text("SELECT 1")).scalar_one() == 1
