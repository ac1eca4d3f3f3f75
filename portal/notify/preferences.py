"""What each person wants to hear, and the signed token of the one-click unsubscribe.

A user without a ``notification_preferences`` row has the defaults: email and
webhook on, and (for a member who is not an admin) nothing about the
organization's pool. An organization's admins may silence its pool alerts
altogether (``organizations.pool_alerts``).

The unsubscribe link in every email carries a token signed with
``SECRET_KEY`` (itsdangerous, as Flask signs its cookies): it names the user
and turns their email off without signing in (RFC 8058's one-click POST, or a
button on the page the link opens). It does not expire: an unsubscribe link
in an old email must still work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from portal.models import Membership, NotificationPreference, Organization

UNSUBSCRIBE_SALT = "portal.notifications.unsubscribe"


@dataclass(frozen=True)
class Preferences:
    email: bool = True
    webhook: bool = True
    pool_alerts: bool = False
    """A member's wish to hear about the pool; admins always do (unless it is silenced)."""


def preferences_of(session: Session, user_id: int) -> Preferences:
    row = session.get(NotificationPreference, user_id)
    if row is None:
        return Preferences()
    return Preferences(email=row.email, webhook=row.webhook, pool_alerts=row.pool_alerts)


def set_preferences(
    session: Session, user_id: int, preferences: Preferences, now: datetime
) -> None:
    """Store ``preferences`` for the user (one statement; the caller commits)."""
    values = {
        "email": preferences.email,
        "webhook": preferences.webhook,
        "pool_alerts": preferences.pool_alerts,
        "updated_at": now,
    }
    session.execute(
        insert(NotificationPreference)
        .values(user_id=user_id, **values)
        .on_conflict_do_update(index_elements=[NotificationPreference.user_id], set_=values)
    )


def turn_email_off(session: Session, user_id: int, now: datetime) -> None:
    """What the unsubscribe link does: email off, the other preferences kept."""
    # One statement that writes only ``email``: reading the row first and
    # writing all three back would undo a change to the others saved between
    # the read and the write (the settings page, in another tab).
    session.execute(
        insert(NotificationPreference)
        .values(user_id=user_id, email=False, updated_at=now)
        .on_conflict_do_update(
            index_elements=[NotificationPreference.user_id],
            set_={"email": False, "updated_at": now},
        )
    )


@dataclass(frozen=True)
class PoolMembership:
    """An organization whose pool the user draws on, and what they hear of it."""

    name: str
    slug: str
    admin: bool
    announced: bool
    """Whether the organization's admins let its pool be announced at all."""


def pool_memberships(session: Session, user_id: int) -> list[PoolMembership]:
    rows = session.execute(
        select(Organization.name, Organization.slug, Membership.role, Organization.pool_alerts)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(Membership.user_id == user_id)
        .order_by(Organization.name)
    )
    return [
        PoolMembership(name=name, slug=slug, admin=role == "admin", announced=announced)
        for name, slug, role, announced in rows
    ]


def set_pool_alerts(session: Session, organization: Organization, enabled: bool) -> None:
    """Whether ``organization``'s pool is announced at all (its admins decide)."""
    organization.pool_alerts = enabled
    session.flush()


def unsubscribe_token(secret_key: str, user_id: int) -> str:
    return str(URLSafeSerializer(secret_key, salt=UNSUBSCRIBE_SALT).dumps(user_id))


def unsubscribing_user(secret_key: str, token: str) -> int | None:
    """The user an unsubscribe token names; ``None`` for a token this portal did not sign."""
    try:
        user_id = URLSafeSerializer(secret_key, salt=UNSUBSCRIBE_SALT).loads(token)
    except BadSignature:
        return None
    if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
        return None
    return user_id
