"""Statements on hot paths, run on PostgreSQL's driver cursor.

Recording a suggestion, looking up an API key and polling the live usage
region run on every call, so their statements skip SQLAlchemy's
per-execution work (compiling, result processing) on PostgreSQL: a Core
SELECT is compiled once (``precompile``; on other databases the very same
statement runs through SQLAlchemy), and the recording statements, written
as SQL for PostgreSQL, go through ``execute_on_driver``, which also keeps a
dropped connection out of the pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, Select
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session, scoped_session

_IDLE = TransactionStatus.IDLE


@dataclass(frozen=True)
class PrecompiledSelect:
    """A SELECT and its psycopg SQL, with the parameters that never change."""

    statement: Select[Any]
    postgresql_sql: str
    constants: Mapping[str, Any]


def precompile(statement: Select[Any], parameters: Iterable[str]) -> PrecompiledSelect:
    """Compile ``statement`` for psycopg once; ``parameters`` are the ones each run supplies.

    Every other bound value (the literals written into the statement, such as
    the live subscription states) is kept as a constant.
    """
    supplied = set(parameters)
    # Rendering the expanding IN lists needs a value for every parameter: the
    # supplied ones get a placeholder here and their real value on each run.
    compiled = statement.params(dict.fromkeys(supplied)).compile(
        dialect=psycopg_dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"render_postcompile": True},
    )
    missing = supplied - set(compiled.params)
    if missing:
        raise ValueError(f"the statement has no parameter(s) {', '.join(sorted(missing))}")
    constants = {name: value for name, value in compiled.params.items() if name not in supplied}
    return PrecompiledSelect(statement, str(compiled), constants)


def fetch_rows(
    connection: Connection,
    query: PrecompiledSelect,
    parameters: Mapping[str, Any],
    *,
    alone: bool = False,
) -> Sequence[tuple[Any, ...]]:
    """Every row of ``query`` as plain tuples (``alone``: see ``execute_on_driver``).

    On PostgreSQL the values are the driver's own (time stamps in the server's
    zone, not converted to UTC by the column types); callers compare instants
    or convert.
    """
    if connection.dialect.name == "postgresql":
        return execute_on_driver(
            connection, query.postgresql_sql, {**query.constants, **parameters}, alone=alone
        )
    return [tuple(row) for row in connection.execute(query.statement, dict(parameters))]


def execute_on_driver(
    connection: Connection,
    sql: str,
    parameters: Mapping[str, Any],
    *,
    alone: bool = False,
    returns_rows: bool = True,
) -> Sequence[tuple[Any, ...]]:
    """Run psycopg-style ``sql`` on the driver's cursor of ``connection``; every row it returns
    (pass ``returns_rows=False`` for a statement without a result).

    For the few statements on hot paths only: SQLAlchemy sees none of it, so
    a connection the database dropped is reported to it here, and not put
    back in the pool.

    With ``alone``, a statement sent while no transaction is in progress is a
    transaction of its own, committed by the server as it finishes: one round
    trip instead of three (BEGIN, the statement, COMMIT), and a row lock it
    takes is held only while the server runs it, not while the client answers.
    Inside a transaction it simply joins it.
    """
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None, "the connection was invalidated"
    cursor = dbapi_connection.cursor()
    autocommit = alone and not _in_transaction(connection)
    if autocommit:
        dbapi_connection.autocommit = True
    try:
        cursor.execute(sql, parameters)
        # Asking ``description`` first would build the columns' descriptions
        # on every call of the hot paths, which all return rows.
        return cursor.fetchall() if returns_rows else []
    except connection.dialect.loaded_dbapi.Error as error:
        if connection.dialect.is_disconnect(error, dbapi_connection, cursor):
            connection.invalidate(error)
        raise
    finally:
        cursor.close()
        if autocommit and not dbapi_connection.closed:
            dbapi_connection.autocommit = False


def _in_transaction(connection: Connection) -> bool:
    """Whether the driver has begun a transaction on ``connection`` (PostgreSQL).

    SQLAlchemy's "begin" is only a promise: psycopg sends BEGIN with the
    first statement, so until then nothing is in progress on the server.
    """
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None, "the connection was invalidated"
    return bool(dbapi_connection.info.transaction_status != _IDLE)


def session_in_transaction(session: Session | scoped_session[Session]) -> bool:
    """Whether ``session`` has begun a transaction (SQLAlchemy's view, not the server's)."""
    # Flask-SQLAlchemy's session is a scoped_session, which does not proxy this.
    actual = session() if isinstance(session, scoped_session) else session
    return actual.in_transaction()


@contextmanager
def lone_statement_connection(
    session: Session, alone: bool = True, bind: Engine | Connection | None = None
) -> Iterator[Connection]:
    """The connection to send a statement of ``session``'s on, ``alone`` if it may be.

    A statement that is its own transaction needs none of the session's: when
    the session has no transaction in progress it runs on the session's bind
    (its connection, or one from the engine's pool), so the session is left
    as it was, and has no transaction to commit afterwards. Otherwise, or
    without ``alone``, it is the session's connection (which begins the
    session's transaction if none is in progress). ``bind``: the session's
    bind, when the caller has it at hand.
    """
    if not alone or session_in_transaction(session):
        yield session.connection()
        return
    bind = session.get_bind() if bind is None else bind
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as connection:
        yield connection
