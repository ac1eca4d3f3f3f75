"""When the database cannot answer: a failure that looks like one (503), never like success.

Any request that meets a dropped or refused database connection, or a pool
with no connection to spare, is answered ``503 Service Unavailable`` with
``Retry-After`` in its app's format: a branded page (drawn without touching
the database), a poll fragment that leaves the last figures standing, or the
API's JSON error. The pool replaces dead connections on the next request, so
the portal recovers by itself once the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, request
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from werkzeug.exceptions import ServiceUnavailable

from portal.extensions import db

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout)
"""What a database that is down, restarting or overloaded raises."""


class DatabaseUnavailable(ServiceUnavailable):
    description = "The portal cannot reach its database just now. Try again in a moment."

    def __init__(self) -> None:
        super().__init__(retry_after=RETRY_AFTER_SECONDS)


def roll_back(session: Session) -> None:
    """Roll back what a failed request began, even when the database is what failed."""
    try:
        session.rollback()
    except DBAPIError:
        log.warning("could not roll back after a failed request", exc_info=True)


def answer_outages(app: Flask, answer: Callable[[DatabaseUnavailable], Response]) -> None:
    """Answer every database outage of ``app``'s requests with ``answer``, after logging it."""

    def unavailable(error: Exception) -> Response:
        roll_back(db.session())
        log.error("database unavailable answering %s %s: %s", request.method, request.path, error)
        return answer(DatabaseUnavailable())

    for database_error in DATABASE_ERRORS:
        app.register_error_handler(database_error, unavailable)
