"""Who may see which organization's usage. Checked on the server for every page, partial and export.

An organization's admins see everything about it; its other members get
"forbidden"; everyone else gets "not found", so that an organization's
existence does not leak.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts import SLUG_PATTERN
from portal.models import Membership, Organization, User


class NotVisible(LookupError):
    """The thing does not exist, or the user may not know that it does."""


class Forbidden(PermissionError):
    """The user may know it exists, but not see it."""


MAX_ID = 2**31 - 1
"""Ids are PostgreSQL ``integer`` serials: a larger number names nothing."""


def organization_for_admin(session: Session, user_id: int, slug: str) -> Organization:
    """The organization ``slug`` if ``user_id`` administers it."""
    if not SLUG_PATTERN.match(slug):
        raise NotVisible(f"no organization {slug!r}")
    row = session.execute(
        select(Organization, Membership.role)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(Organization.slug == slug, Membership.user_id == user_id)
    ).one_or_none()
    if row is None:
        raise NotVisible(f"no organization {slug!r} for this user")
    organization: Organization = row[0]
    if row[1] != "admin":
        raise Forbidden(f"only admins of {slug!r} may see its usage")
    return organization


def member_of(session: Session, organization: Organization, member_id: int) -> User:
    """A member of ``organization``; ``NotVisible`` for anyone else."""
    if not 0 < member_id <= MAX_ID:
        raise NotVisible(f"no member {member_id} in {organization.slug!r}")
    user = session.scalar(
        select(User)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.organization_id == organization.id, User.id == member_id)
    )
    if user is None:
        raise NotVisible(f"no member {member_id} in {organization.slug!r}")
    return user


def administered_organizations(session: Session, user_id: int) -> list[Organization]:
    """Organizations ``user_id`` administers, by name (for the navigation)."""
    return list(
        session.scalars(
            select(Organization)
            .join(Membership, Membership.organization_id == Organization.id)
            .where(Membership.user_id == user_id, Membership.role == "admin")
            .order_by(Organization.name)
        )
    )
