"""One connection per request for lone read-only statements, outside any transaction."""

from __future__ import annotations

from flask import Flask, g
from sqlalchemy import Connection

from portal.extensions import db

_KEY = "_read_connection"


def read_connection() -> Connection:
    """This request's connection for lone reads, checked out of the pool on first use.

    A single SELECT needs no BEGIN and ROLLBACK around it: on the polled live
    region those two round trips cost as much as the statements themselves.
    So the reads made on it are lone statements (``fetch_rows(...,
    alone=True)``), each a transaction of its own. Views that read more than
    once, or write, keep using ``db.session`` and its transaction.
    """
    connection: Connection | None = g.get(_KEY)
    if connection is None:
        connection = db.engine.connect()
        setattr(g, _KEY, connection)
    return connection


def close_read_connection(error: BaseException | None = None) -> None:
    """Give the connection back to the pool at the end of the request, however it ended."""
    connection: Connection | None = g.pop(_KEY, None)
    if connection is not None:
        connection.close()


def init_app(app: Flask) -> None:
    # Per request, not per app context: tests (and CLI commands) keep one app
    # context open across many requests.
    app.teardown_request(close_read_connection)
