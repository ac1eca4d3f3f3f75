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
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

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

    @property
    def included(self) -> int:
        return self.plan.included_for(self.seats)

    def period_at(self, moment: datetime) -> BillingPeriod:
        return period_containing(moment, self.anchor)


class UnknownUser(LookupError):
    """No user has this id or email."""


def normalize_email(email: str) -> str:
    return email.strip().lower()


def resolve_effective_plan(session: Session, user: int | str) -> EffectivePlan:
    """The effective plan of a user given by id or by email, in one query.

    Raises ``UnknownUser`` when there is no such user.
    """
    first_live_membership = (
        select(func.min(Membership.id))
        .join(Organization, Organization.id == Membership.organization_id)
        .where(
            Membership.user_id == User.id,
            Organization.subscription_status.in_(LIVE_SUBSCRIPTION_STATUSES),
        )
        .scalar_subquery()
    )
    live_subscription = aliased(UserSubscription)
    member = aliased(Membership)
    org = aliased(Organization)
    query = (
        select(
            User.id,
            User.email,
            User.display_name,
            live_subscription.plan_id,
            live_subscription.billing_anchor,
            live_subscription.stripe_customer_id,
            org.id,
            org.slug,
            org.plan_id,
            org.seats,
            org.billing_anchor,
            org.stripe_customer_id,
        )
        .outerjoin(
            live_subscription,
            and_(
                live_subscription.user_id == User.id,
                live_subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
                live_subscription.plan_id != FREE.id,
            ),
        )
        .outerjoin(member, member.id == first_live_membership)
        .outerjoin(org, org.id == member.organization_id)
    )
    if isinstance(user, int):
        query = query.where(User.id == user)
    else:
        query = query.where(User.email == normalize_email(user))
    row = session.execute(query).one_or_none()
    if row is None:
        raise UnknownUser(f"no user {user!r}")
    (
        user_id,
        email,
        display_name,
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
    if sub_plan is not None:
        return EffectivePlan(
            user_id,
            email,
            display_name,
            get_plan(sub_plan),
            BillingSubject(SubjectKind.USER, user_id, email, sub_customer),
            1,
            sub_anchor,
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
        )
    return EffectivePlan(
        user_id,
        email,
        display_name,
        FREE,
        BillingSubject(SubjectKind.USER, user_id, email, None),
        1,
        None,
    )
