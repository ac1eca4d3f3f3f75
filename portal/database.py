"""How the portal uses its PostgreSQL connections: statements alone, and dead connections.

Everything goes through SQLAlchemy, whose compiled cache serves every
statement built once (Core constructs and ``text()``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session


@contextmanager
def lone_statement(session: Session) -> Iterator[Connection]:
    """The connection for a statement that needs no transaction around it.

    When ``session`` has no transaction in progress, a pooled connection in
    autocommit mode: the statement is a transaction of its own, committed by
    the server as it finishes. That is one round trip where psycopg would
    otherwise send BEGIN and COMMIT apart (three), and a row lock the
    statement takes is held only while the server runs it. Inside a
    transaction it is the session's connection, and the statement joins it.
    """
    if session.in_transaction():
        yield session.connection()
        return
    bind = session.get_bind()
    if isinstance(bind, Connection):  # a session bound to one connection by its caller
        if bind.in_transaction():
            yield bind
        else:
            with bind.begin():
                yield bind
        return
    with bind.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


IDLE_BEFORE_PING_SECONDS = 10.0
"""A pooled connection unused this long is checked before use."""


def ping_connections_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for a while.

    A connection the database dropped (restart, failover, idle timeout) must
    not fail a request. SQLAlchemy's ``pool_pre_ping`` checks on every
    checkout, a round trip per request; but a connection used a moment ago
    is alive, and under load every connection is. So only connections idle
    for ``IDLE_BEFORE_PING_SECONDS`` are pinged, and a dead one is replaced
    before the request sees it.
    """

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_BEFORE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if not engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise
            alive = False
        if not alive:
            # The pool discards this connection and checks out a new one.
            raise DisconnectionError("pooled connection was closed by the database")
