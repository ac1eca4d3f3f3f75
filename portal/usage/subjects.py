"""Who pays for a user's usage: the effective plan and billing subject.

Rule, in order, for a user at a moment:

1. A live (active, trialing or past_due) individual subscription on a paid
   plan: that plan, billed to the user. A subscription row on the free plan
   is the same as none.
2. Else membership of an organization whose subscription is live: the
   organization's plan, drawing on its pool (the organization is the billing
   subject). A user in several such organizations draws on the one they
   joined first (the earliest membership); joining another organization
   later never moves their usage.
3. Else the free plan, billed to the user, in UTC calendar months.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Select, String, and_, any_, bindparam, func, literal, select
from sqlalchemy.orm import Session

from portal.accounts import normalize_email
from portal.database import lone_statement
from portal.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    Membership,
    Organization,
    User,
    UserSubscription,
)
from portal.periods import BillingPeriod, period_containing
from portal.plans import FREE, Plan, get_plan


class SubjectKind(enum.StrEnum):
    USER = "user"
    ORGANIZATION = "organization"


@dataclass(frozen=True)
class BillingSubject:
    """The account a usage counts against: a user, or an organization's pool."""

    kind: SubjectKind
    id: int
    name: str
    """The user's email or the organization's slug."""
    stripe_customer_id: str | None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class EffectivePlan:
    """The plan that governs one user's usage, and whose quota it draws on."""

    user_id: int
    email: str
    display_name: str
    plan: Plan
    subject: BillingSubject
    seats: int
    anchor: datetime | None
    """Billing cycle anchor; ``None`` for UTC calendar months (free)."""
    disabled: bool = False
    """An operator disabled the user (``flask disable-user``): nothing is recorded for them."""

    @property
    def included(self) -> int:
        return self.plan.included_for(self.seats)

    @property
    def pool_id(self) -> int | None:
        """The organization whose pool the user draws on; ``None`` when billed alone."""
        return self.subject.id if self.subject.kind is SubjectKind.ORGANIZATION else None

    def period_at(self, moment: datetime) -> BillingPeriod:
        return period_containing(moment, self.anchor)


class UnknownUser(LookupError):
    """No user has this id or email."""


@functools.cache
def effective_plan_query(lookup: str) -> Select[Any]:
    """The resolution query, built once: this runs on every recorded event."""
    users = User.__table__
    subscriptions = UserSubscription.__table__
    memberships = Membership.__table__
    organizations = Organization.__table__
    member_orgs = organizations.alias("member_orgs")
    # One array parameter, not an IN list: SQLAlchemy would expand an IN list
    # into the statement again on every execution.
    live = any_(literal(list(LIVE_SUBSCRIPTION_STATUSES), ARRAY(String)))
    first_live_membership = (
        select(func.min(memberships.c.id))
        .join(member_orgs, member_orgs.c.id == memberships.c.organization_id)
        .where(
            memberships.c.user_id == users.c.id,
            member_orgs.c.subscription_status == live,
        )
        .scalar_subquery()
    )
    chosen = memberships.alias("chosen_membership")
    query = (
        select(
            users.c.id,
            users.c.email,
            users.c.display_name,
            users.c.disabled_at,
            subscriptions.c.plan_id,
            subscriptions.c.billing_anchor,
            subscriptions.c.stripe_customer_id,
            organizations.c.id,
            organizations.c.slug,
            organizations.c.plan_id,
            organizations.c.seats,
            organizations.c.billing_anchor,
            organizations.c.stripe_customer_id,
        )
        .select_from(users)
        .outerjoin(
            subscriptions,
            and_(
                subscriptions.c.user_id == users.c.id,
                subscriptions.c.status == live,
                subscriptions.c.plan_id != FREE.id,
            ),
        )
        .outerjoin(chosen, chosen.c.id == first_live_membership)
        .outerjoin(organizations, organizations.c.id == chosen.c.organization_id)
    )
    if lookup == "emails":
        return query.where(users.c.email == any_(bindparam("user_keys", type_=ARRAY(String))))
    key = users.c.email if lookup == "email" else users.c.id
    return query.where(key == bindparam("user_key"))


def lookup_key(user: int | str) -> tuple[str, int | str]:
    """How the resolution query finds a user: by normalized email or by id."""
    return ("email", normalize_email(user)) if isinstance(user, str) else ("id", user)


def resolve_effective_plan(session: Session, user: int | str) -> EffectivePlan:
    """The effective plan of a user given by id or by email, in one query.

    Raises ``UnknownUser`` when there is no such user.
    """
    lookup, key = lookup_key(user)
    with lone_statement(session) as connection:
        row = connection.execute(effective_plan_query(lookup), {"user_key": key}).one_or_none()
    if row is None:
        raise UnknownUser(f"no user {user!r}")
    return effective_plan_from_row(row)


def resolve_effective_plans(session: Session, emails: Iterable[str]) -> dict[str, EffectivePlan]:
    """Effective plans by normalized email, in one query; unknown emails are absent."""
    keys = sorted({normalize_email(email) for email in emails})
    if not keys:
        return {}
    with lone_statement(session) as connection:
        rows = connection.execute(effective_plan_query("emails"), {"user_keys": keys}).all()
    return {plan.email: plan for plan in map(effective_plan_from_row, rows)}


def effective_plan_from_row(row: Any) -> EffectivePlan:
    (
        user_id,
        email,
        display_name,
        disabled_at,
        sub_plan,
        sub_anchor,
        sub_customer,
        org_id,
        org_slug,
        org_plan,
        org_seats,
        org_anchor,
        org_customer,
    ) = row
    disabled = disabled_at is not None
    if sub_plan is not None:
        return EffectivePlan(
            user_id,
            email,
            display_name,
            get_plan(sub_plan),
            BillingSubject(SubjectKind.USER, user_id, email, sub_customer),
            1,
            sub_anchor,
            disabled,
        )
    if org_id is not None:
        return EffectivePlan(
            user_id,
            email,
            display_name,
            get_plan(org_plan),
            BillingSubject(SubjectKind.ORGANIZATION, org_id, org_slug, org_customer),
            org_seats,
            org_anchor,
            disabled,
        )
    return EffectivePlan(
        user_id,
        email,
        display_name,
        FREE,
        BillingSubject(SubjectKind.USER, user_id, email, None),
        1,
        None,
        disabled,
    )
