"""Who pays for a user's usage: the effective plan and billing subject.

Rule, in order, for a user at a moment:

1. A live individual subscription on a paid plan: that plan, billed to the
   user. A subscription row on the free plan is the same as none.
2. Else membership of an organization whose subscription is live: the
   organization's plan, drawing on its pool (the organization is the billing
   subject). A user in several such organizations draws on the one they
   joined first (the earliest membership); joining another organization
   later never moves their usage.
3. Else the free plan, billed to the user, in UTC calendar months.

A subscription is live while its status is active, trialing or past_due (a
trial is a real subscription; a past-due one keeps working while Stripe
retries the payment), and until the end of its period when it was canceled
at the period's end: from that moment it governs nothing, even before
Stripe's webhook says it ended.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    func,
    literal,
    not_,
    select,
)
from sqlalchemy.orm import Session

from portal.accounts import normalize_email
from portal.database import lone_statement
from portal.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    Membership,
    Organization,
    User,
    UserSubscription,
    UTCDateTime,
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
    label: str = ""
    """What people read: the user's email, or the organization's name."""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class SubscriptionTerms:
    """What Stripe says of the subscription behind a plan, for the pages to show."""

    status: str
    trial_end: datetime | None
    cancel_at_period_end: bool
    current_period: tuple[datetime, datetime] | None
    """Stripe's current period; ``None`` for a subscription made by hand."""


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
    terms: SubscriptionTerms | None = None
    """The subscription's state; ``None`` on the free plan."""
    fallback: Plan = FREE
    """The plan that governs once this subscription ends: an organization's, or free."""

    @property
    def included(self) -> int:
        return self.plan.included_for(self.seats)

    @property
    def pool_id(self) -> int | None:
        """The organization whose pool the user draws on; ``None`` when billed alone."""
        return self.subject.id if self.subject.kind is SubjectKind.ORGANIZATION else None

    def period_at(self, moment: datetime) -> BillingPeriod:
        current = self.terms.current_period if self.terms is not None else None
        return period_containing(moment, self.anchor, current)


def organization_subject(org: Organization) -> BillingSubject:
    """The pool of ``org``, as the billing subject its members' usage counts against."""
    return BillingSubject(
        SubjectKind.ORGANIZATION, org.id, org.slug, org.stripe_customer_id, org.name
    )


class UnknownUser(LookupError):
    """No user has this id or email."""


# One array parameter, not an IN list: SQLAlchemy would expand an IN list
# into the statement again on every execution.
_LIVE = literal(list(LIVE_SUBSCRIPTION_STATUSES), ARRAY(String))


def _live(table: Table, status: ColumnElement[str]) -> ColumnElement[bool]:
    """Whether a subscription row (a user's or an organization's) governs at ``:now``."""
    ended_at_period_end = and_(
        table.c.cancel_at_period_end,
        table.c.current_period_end <= bindparam("now", type_=UTCDateTime()),
    )
    return and_(status == any_(_LIVE), not_(ended_at_period_end))


def _subscription_columns(
    prefix: str, table: Table, status: ColumnElement[str]
) -> list[ColumnElement[Any]]:
    """A subject's subscription columns, labelled ``<prefix>_<name>`` for the row's reader."""
    columns = {
        "plan_id": table.c.plan_id,
        "status": status,
        "anchor": table.c.billing_anchor,
        "customer": table.c.stripe_customer_id,
        "period_start": table.c.current_period_start,
        "period_end": table.c.current_period_end,
        "cancel_at_period_end": table.c.cancel_at_period_end,
        "trial_end": table.c.trial_end,
    }
    return [column.label(f"{prefix}_{name}") for name, column in columns.items()]


@functools.cache
def effective_plan_query(lookup: str) -> Select[Any]:
    """The resolution query, built once: this runs on every recorded event.

    Parameters: ``user_key`` (an id or an email; ``user_keys`` for a list of
    emails) and ``now``.
    """
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
            _live(member_orgs, member_orgs.c.subscription_status),
        )
        .scalar_subquery()
    )
    chosen = memberships.alias("chosen_membership")
    query = (
        select(
            users.c.id.label("user_id"),
            users.c.email,
            users.c.display_name,
            users.c.disabled_at,
            *_subscription_columns("sub", subscriptions, subscriptions.c.status),
            organizations.c.id.label("org_id"),
            organizations.c.slug.label("org_slug"),
            organizations.c.name.label("org_name"),
            organizations.c.seats.label("org_seats"),
            *_subscription_columns("org", organizations, organizations.c.subscription_status),
        )
        .select_from(users)
        .outerjoin(
            subscriptions,
            and_(
                subscriptions.c.user_id == users.c.id,
                subscriptions.c.plan_id != FREE.id,
                _live(subscriptions, subscriptions.c.status),
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


def resolve_effective_plan(session: Session, user: int | str, now: datetime) -> EffectivePlan:
    """The effective plan of a user given by id or by email at ``now``, in one query.

    Raises ``UnknownUser`` when there is no such user.
    """
    lookup, key = lookup_key(user)
    with lone_statement(session) as connection:
        row = connection.execute(
            effective_plan_query(lookup), {"user_key": key, "now": now}
        ).one_or_none()
    if row is None:
        raise UnknownUser(f"no user {user!r}")
    return effective_plan_from_row(row)


def resolve_effective_plans(
    session: Session, emails: Iterable[str], now: datetime
) -> dict[str, EffectivePlan]:
    """Effective plans by normalized email at ``now``, in one query; unknown emails are absent."""
    keys = sorted({normalize_email(email) for email in emails})
    if not keys:
        return {}
    with lone_statement(session) as connection:
        rows = connection.execute(
            effective_plan_query("emails"), {"user_keys": keys, "now": now}
        ).all()
    return {plan.email: plan for plan in map(effective_plan_from_row, rows)}


def _terms(row: Any, prefix: str) -> SubscriptionTerms:
    start, end = getattr(row, f"{prefix}_period_start"), getattr(row, f"{prefix}_period_end")
    return SubscriptionTerms(
        status=getattr(row, f"{prefix}_status"),
        trial_end=getattr(row, f"{prefix}_trial_end"),
        cancel_at_period_end=getattr(row, f"{prefix}_cancel_at_period_end"),
        current_period=(start, end) if start is not None and end is not None else None,
    )


def effective_plan_from_row(row: Any) -> EffectivePlan:
    """The effective plan from a row of ``effective_plan_query`` (read by column name)."""
    user = (row.user_id, row.email, row.display_name)
    disabled = row.disabled_at is not None
    organization = None
    if row.org_id is not None:
        organization = BillingSubject(
            SubjectKind.ORGANIZATION, row.org_id, row.org_slug, row.org_customer, row.org_name
        )
    if row.sub_plan_id is not None:
        return EffectivePlan(
            *user,
            plan=get_plan(row.sub_plan_id),
            subject=BillingSubject(
                SubjectKind.USER, row.user_id, row.email, row.sub_customer, row.email
            ),
            seats=1,
            anchor=row.sub_anchor,
            disabled=disabled,
            terms=_terms(row, "sub"),
            fallback=get_plan(row.org_plan_id) if organization is not None else FREE,
        )
    if organization is not None:
        return EffectivePlan(
            *user,
            plan=get_plan(row.org_plan_id),
            subject=organization,
            seats=row.org_seats,
            anchor=row.org_anchor,
            disabled=disabled,
            terms=_terms(row, "org"),
        )
    return EffectivePlan(
        *user,
        plan=FREE,
        subject=BillingSubject(SubjectKind.USER, row.user_id, row.email, None, row.email),
        seats=1,
        anchor=None,
        disabled=disabled,
    )
