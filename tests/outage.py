"""Taking the database away from a running portal, as a stopped server would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from flask import Flask

from portal.extensions import db


@contextmanager
def database_down(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every new connection of both apps is refused, as by a stopped server."""

    def refused() -> object:
        raise psycopg.OperationalError("connection refused (the database is down)")

    engines = []
    for each in (app, app.extensions["usage_api"]):
        with each.app_context():
            db.session.remove()
            engines.append(db.engine)
    with monkeypatch.context() as patch:
        for engine in engines:
            engine.dispose()
            patch.setattr(engine.pool, "_creator", refused)
        yield
    for engine in engines:
        engine.dispose()  # the next request connects afresh, as after a restart
