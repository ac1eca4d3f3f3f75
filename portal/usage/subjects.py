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
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, select
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

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


@functools.cache
def _effective_plan_query(lookup: str) -> Select[Any]:
    """The resolution query, built once: this runs on every recorded event."""
    users = User.__table__
    subscriptions = UserSubscription.__table__
    memberships = Membership.__table__
    organizations = Organization.__table__
    member_orgs = organizations.alias("member_orgs")
    first_live_membership = (
        select(func.min(memberships.c.id))
        .join(member_orgs, member_orgs.c.id == memberships.c.organization_id)
        .where(
            memberships.c.user_id == users.c.id,
            member_orgs.c.subscription_status.in_(LIVE_SUBSCRIPTION_STATUSES),
        )
        .scalar_subquery()
    )
    chosen = memberships.alias("chosen_membership")
    query = (
        select(
            users.c.id,
            users.c.email,
            users.c.display_name,
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
                subscriptions.c.status.in_(LIVE_SUBSCRIPTION_STATUSES),
                subscriptions.c.plan_id != FREE.id,
            ),
        )
        .outerjoin(chosen, chosen.c.id == first_live_membership)
        .outerjoin(organizations, organizations.c.id == chosen.c.organization_id)
    )
    if lookup == "emails":
        return query.where(users.c.email.in_(bindparam("user_keys", expanding=True)))
    key = users.c.email if lookup == "email" else users.c.id
    return query.where(key == bindparam("user_key"))


def resolve_effective_plan(session: Session, user: int | str) -> EffectivePlan:
    """The effective plan of a user given by id or by email, in one query.

    Raises ``UnknownUser`` when there is no such user.
    """
    key: int | str
    if isinstance(user, str):
        query, key = _effective_plan_query("email"), normalize_email(user)
    else:
        query, key = _effective_plan_query("id"), user
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # Every recorded suggestion starts here: run the compiled SQL on the
        # driver's cursor, skipping SQLAlchemy's per-execution work.
        sql, constants = _postgresql_sql("email" if isinstance(user, str) else "id")
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, {**constants, "user_key": key})
            row = cursor.fetchone()
        finally:
            cursor.close()
    else:
        row = connection.execute(query, {"user_key": key}).one_or_none()
    if row is None:
        raise UnknownUser(f"no user {user!r}")
    return _effective_plan(row)


@functools.cache
def _postgresql_sql(lookup: str) -> tuple[str, dict[str, Any]]:
    """The resolution query compiled once for psycopg, with its constant parameters."""
    compiled = (
        _effective_plan_query(lookup)
        .params(user_key=None)
        .compile(
            dialect=psycopg_dialect(),  # type: ignore[no-untyped-call]
            compile_kwargs={"render_postcompile": True},
        )
    )
    constants = {name: value for name, value in compiled.params.items() if name != "user_key"}
    return str(compiled), constants


def resolve_effective_plans(session: Session, emails: Iterable[str]) -> dict[str, EffectivePlan]:
    """Effective plans by normalized email, in one query; unknown emails are absent."""
    keys = sorted({normalize_email(email) for email in emails})
    if not keys:
        return {}
    rows = session.connection().execute(_effective_plan_query("emails"), {"user_keys": keys})
    return {plan.email: plan for plan in map(_effective_plan, rows)}


def _effective_plan(row: Any) -> EffectivePlan:
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
    # The driver hands back times in the server's zone; the model layer, UTC.
    sub_anchor = sub_anchor.astimezone(UTC) if sub_anchor else None
    org_anchor = org_anchor.astimezone(UTC) if org_anchor else None
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
