"""The organization admin's view: the pool and every member's share of it."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from portal.models import Membership, MemberUsage, Organization, UsageRecord, User
from portal.periods import BillingPeriod, period_containing
from portal.plans import (
    LEVEL_FLOORS,
    Plan,
    UsageFigures,
    WarningLevel,
    get_plan,
    percent_used,
    warning_level,
)
from portal.usage.subjects import SubscriptionTerms

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 200


class MemberSort(enum.StrEnum):
    NAME = "name"
    EMAIL = "email"
    ROLE = "role"
    USED = "used"
    SHARE = "share"
    """Share of the pool and level follow usage: the same order as ``USED``, their own names
    so each column sorts by what it shows."""
    LEVEL = "level"
    LAST_ACTIVITY = "last_activity"

    @property
    def most_first(self) -> bool:
        """Whether this column first sorts from the most (highest, latest) down: usage
        and recent activity are what an admin looks for; names and roles read A to Z."""
        return self in (
            MemberSort.USED,
            MemberSort.SHARE,
            MemberSort.LEVEL,
            MemberSort.LAST_ACTIVITY,
        )


@dataclass(frozen=True)
class MemberShare:
    """A member's usage of the pool.

    The warning level compares it with one seat's allowance, so an admin sees
    who uses more than their share; the share is of the pool's included amount.
    """

    used: int
    pool_included: int
    seat_included: int
    last_used_at: datetime | None
    """Last usage in the period; ``None`` when the member used nothing."""

    @property
    def share_percent(self) -> Decimal:
        return percent_used(self.used, self.pool_included)

    @property
    def warning_level(self) -> WarningLevel:
        return warning_level(self.used, self.seat_included)


@dataclass(frozen=True)
class MemberUsageRow(MemberShare):
    """One row of the member table: who, and their share in the period."""

    user_id: int
    display_name: str
    email: str
    role: str
    disabled: bool = False
    """An operator disabled the member: nothing more is recorded; their usage stays in the pool."""


@dataclass(frozen=True)
class OrgUsageSummary:
    organization_id: int
    slug: str
    name: str
    plan: Plan
    seats: int
    period: BillingPeriod
    pool: UsageFigures
    """Everything counted against the pool, former members included."""
    member_count: int
    members_used: int
    """Usage of all current members, not only those on this page."""
    members_per_level: dict[WarningLevel, int]
    top_member_used: int
    """The most any member used: share bars are drawn against it, so the largest fills its bar."""
    rows: list[MemberUsageRow]
    matching_members: int
    """Members matching the filter, across all pages."""
    page: int
    page_size: int
    sort: MemberSort
    descending: bool
    search: str
    terms: SubscriptionTerms | None = None
    """What Stripe says of the organization's subscription; ``None`` for one made by hand."""
    stripe_customer_id: str | None = None

    @property
    def ends_at(self) -> datetime | None:
        """When a subscription canceled at its period's end stops; ``None`` otherwise."""
        if self.terms is None or not self.terms.cancel_at_period_end:
            return None
        return self.terms.current_period[1] if self.terms.current_period else None

    @property
    def average_per_member(self) -> Decimal:
        if self.member_count == 0:
            return Decimal(0)
        return (Decimal(self.members_used) / self.member_count).quantize(Decimal("0.1"))

    @property
    def over_seats(self) -> bool:
        """More members than the seats paid for: the pool does not grow with them."""
        return self.member_count > self.seats

    @property
    def page_count(self) -> int:
        return max(1, math.ceil(self.matching_members / self.page_size))


@dataclass(frozen=True)
class SeatCount:
    """An organization with more members than the seats it pays for."""

    slug: str
    name: str
    members: int
    seats: int

    def __str__(self) -> str:
        seats = f"{self.seats} seat{'' if self.seats == 1 else 's'}"
        return f"{self.name} ({self.slug}): {self.members} members on {seats}"


def organizations_over_seats(session: Session, slug: str | None = None) -> list[SeatCount]:
    """Organizations whose members outnumber their seats (only ``slug``'s when given).

    Every membership counts, a disabled member's too, as on the organization's
    page: the pool is sized by seats and does not grow with members.
    """
    members = func.count(Membership.user_id)
    query = (
        select(Organization.slug, Organization.name, members, Organization.seats)
        .join(Membership, Membership.organization_id == Organization.id)
        .group_by(Organization.id)
        .having(members > Organization.seats)
        .order_by(Organization.slug)
    )
    if slug is not None:
        query = query.where(Organization.slug == slug)
    return [SeatCount(*row) for row in session.execute(query)]


def organization_terms(org: Organization) -> SubscriptionTerms | None:
    """What Stripe says of the organization's subscription; ``None`` for one made by hand."""
    if org.stripe_subscription_id is None:
        return None
    start, end = org.current_period_start, org.current_period_end
    return SubscriptionTerms(
        status=org.subscription_status,
        trial_end=org.trial_end,
        cancel_at_period_end=org.cancel_at_period_end,
        current_period=(start, end) if start is not None and end is not None else None,
    )


def organization_period(org: Organization, moment: datetime) -> BillingPeriod:
    """The organization's billing period containing ``moment`` (Stripe's current one wins)."""
    terms = organization_terms(org)
    current = terms.current_period if terms is not None else None
    return period_containing(moment, org.billing_anchor, current)


def _member_used() -> Any:
    return func.coalesce(MemberUsage.used, 0)


def _members_query(org: Organization, period: BillingPeriod) -> Select[Any]:
    """Every member of ``org`` with their usage in ``period`` (zero when none)."""
    return (
        select(
            User.id,
            User.display_name,
            User.email,
            Membership.role,
            _member_used().label("used"),
            MemberUsage.last_used_at,
            User.disabled_at,
        )
        .select_from(Membership)
        .join(User, User.id == Membership.user_id)
        .outerjoin(
            MemberUsage,
            and_(
                MemberUsage.organization_id == Membership.organization_id,
                MemberUsage.period_start == period.start,
                MemberUsage.user_id == Membership.user_id,
            ),
        )
        .where(Membership.organization_id == org.id)
    )


def _search_clause(search: str) -> Any:
    pattern = (
        "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    )
    return or_(
        func.lower(User.display_name).like(pattern, escape="\\"),
        User.email.like(pattern, escape="\\"),
    )


_SORT_COLUMNS: dict[MemberSort, Any] = {
    MemberSort.NAME: func.lower(User.display_name),
    MemberSort.EMAIL: User.email,
    MemberSort.ROLE: Membership.role,
    MemberSort.USED: _member_used(),
    MemberSort.SHARE: _member_used(),
    MemberSort.LEVEL: _member_used(),
    MemberSort.LAST_ACTIVITY: MemberUsage.last_used_at,
}


def _ordered(query: Select[Any], sort: MemberSort, descending: bool) -> Select[Any]:
    column = _SORT_COLUMNS[sort]
    # Members without activity sort last either way; the email breaks ties so
    # pages never overlap.
    key = column.desc() if descending else column.asc()
    if sort is MemberSort.LAST_ACTIVITY:
        return query.order_by(column.is_(None), key, User.email)
    return query.order_by(key, User.email)


def get_org_usage_summary(
    session: Session,
    org: Organization,
    period: BillingPeriod,
    *,
    sort: MemberSort = MemberSort.USED,
    descending: bool = True,
    search: str = "",
    page: int = 1,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> OrgUsageSummary:
    """The pool, totals over all members, and one page of the member table.

    Four SQL statements whatever the number of members.
    """
    if page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be from 1 to {MAX_PAGE_SIZE}, got {page_size}")
    plan = get_plan(org.plan_id)
    pool_included = plan.included_for(org.seats)
    search = search.strip()

    pool_used = session.scalar(
        select(UsageRecord.used).where(
            UsageRecord.organization_id == org.id, UsageRecord.period_start == period.start
        )
    )

    members = _members_query(org, period).subquery()
    at_least = [
        func.coalesce(
            func.sum(case((members.c.used * 100 >= floor * plan.included_per_seat, 1), else_=0)), 0
        )
        for _, floor in LEVEL_FLOORS
    ]
    member_count, members_used, top_member_used, *reaching = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(members.c.used), 0),
            func.coalesce(func.max(members.c.used), 0),
            *at_least,
        )
    ).one()
    # ``reaching`` counts members at or above each level's floor, highest
    # level first; a level's own count is the difference to the next one up.
    per_level: dict[WarningLevel, int] = {}
    above = 0
    for (level, _), count in zip(LEVEL_FLOORS, reaching, strict=True):
        per_level[level] = int(count) - above
        above = int(count)

    filtered = _members_query(org, period)
    if search:
        filtered = filtered.where(_search_clause(search))
    matching = session.scalar(select(func.count()).select_from(filtered.subquery())) or 0
    page_rows = session.execute(
        _ordered(filtered, sort, descending).limit(page_size).offset((page - 1) * page_size)
    ).all()
    return OrgUsageSummary(
        organization_id=org.id,
        slug=org.slug,
        name=org.name,
        plan=plan,
        seats=org.seats,
        period=period,
        pool=UsageFigures(plan, pool_used or 0, pool_included),
        member_count=int(member_count),
        members_used=int(members_used),
        members_per_level=per_level,
        top_member_used=int(top_member_used),
        rows=[_row(r, pool_included, plan.included_per_seat) for r in page_rows],
        matching_members=matching,
        page=page,
        page_size=page_size,
        sort=sort,
        descending=descending,
        search=search,
        terms=organization_terms(org),
        stripe_customer_id=org.stripe_customer_id,
    )


def iter_org_member_usage(
    session: Session,
    org: Organization,
    period: BillingPeriod,
    *,
    sort: MemberSort = MemberSort.USED,
    descending: bool = True,
    search: str = "",
) -> Iterator[MemberUsageRow]:
    """Every member's row, streamed from the database in order (for exports)."""
    plan = get_plan(org.plan_id)
    query = _members_query(org, period)
    if search.strip():
        query = query.where(_search_clause(search.strip()))
    result = session.execute(
        _ordered(query, sort, descending), execution_options={"yield_per": 1000}
    )
    pool_included = plan.included_for(org.seats)
    for row in result:
        yield _row(row, pool_included, plan.included_per_seat)


def _row(row: Any, pool_included: int, seat_included: int) -> MemberUsageRow:
    return MemberUsageRow(
        user_id=row.id,
        display_name=row.display_name,
        email=row.email,
        role=row.role,
        used=int(row.used),
        pool_included=pool_included,
        seat_included=seat_included,
        last_used_at=row.last_used_at,
        disabled=row.disabled_at is not None,
    )


@dataclass(frozen=True)
class MemberPeriodUsage(MemberShare):
    """A member's share in one of the organization's periods."""

    period: BillingPeriod


def get_member_history(
    session: Session, org: Organization, user_id: int, now: datetime, periods: int = 12
) -> list[MemberPeriodUsage]:
    """One member's part of the pool over the organization's last periods, newest first."""
    plan = get_plan(org.plan_id)
    current = organization_period(org, now)
    window = [current.shifted(-offset) for offset in range(periods)]
    rows = {
        row.period_start: row
        for row in session.execute(
            select(MemberUsage.period_start, MemberUsage.used, MemberUsage.last_used_at).where(
                MemberUsage.organization_id == org.id,
                MemberUsage.user_id == user_id,
                MemberUsage.period_start >= window[-1].start,
            )
        )
    }
    pool, seat = plan.included_for(org.seats), plan.included_per_seat
    return [
        MemberPeriodUsage(
            used=rows[p.start].used if p.start in rows else 0,
            pool_included=pool,
            seat_included=seat,
            last_used_at=rows[p.start].last_used_at if p.start in rows else None,
            period=p,
        )
        for p in window
    ]
