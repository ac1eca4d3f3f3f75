"""Who a signed-in session belongs to, read on every page in one cheap statement."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select

from portal.models import User
from portal.precompiled import PrecompiledSelect, fetch_rows, precompile


@dataclass(frozen=True)
class Identity:
    """The little of a user that every page needs: the id and the email shown in the footer."""

    id: int
    email: str


@functools.cache
def _identity_query() -> PrecompiledSelect:
    users = User.__table__
    statement = select(users.c.id, users.c.email).where(users.c.id == bindparam("user_id"))
    return precompile(statement, ["user_id"])


def find_identity(connection: Connection, user_id: int) -> Identity | None:
    """The user with this id, or ``None`` when there is no such user (any more)."""
    rows = fetch_rows(connection, _identity_query(), {"user_id": user_id}, alone=True)
    if not rows:
        return None
    found_id, email = rows[0]
    return Identity(found_id, email)
