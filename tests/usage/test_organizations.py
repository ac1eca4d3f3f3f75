from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.models import Organization
from portal.plans import WarningLevel
from portal.usage import MemberSort, get_org_usage_summary, organization_period, record_usage
from tests.factories import T0, make_org, make_user

NOW = T0 + timedelta(days=5)


def org_with_usage(session: Session, usage: list[int], seats: int = 20) -> Organization:
    """A team org whose n-th member used ``usage[n]`` this period (seat allowance 50)."""
    org = make_org(session, plan="team", seats=seats)
    for n, used in enumerate(usage):
        user = make_user(
            session, org=org, name=f"Member {n:02d}", email=f"m{n:02d}@{org.slug}.example"
        )
        if used:
            record_usage(
                session, user.id, idempotency_key=f"{org.slug}-{n}", now=NOW, quantity=used
            )
    session.commit()
    return org


def test_totals_cover_all_members_not_just_the_first_page(session: Session) -> None:
    usage = [n * 3 for n in range(15)]  # 15 members: more than the original's top 10
    org = org_with_usage(session, usage)
    summary = get_org_usage_summary(session, org, organization_period(org, NOW), page_size=5)
    assert summary.member_count == 15
    assert summary.members_used == sum(usage) == summary.pool.used
    assert summary.pool.included == 1000
    assert summary.average_per_member == sum(usage) / 15
    assert len(summary.rows) == 5 and summary.page_count == 3
    assert [r.used for r in summary.rows] == [42, 39, 36, 33, 30]


def test_members_are_counted_per_warning_level_against_one_seat(session: Session) -> None:
    # Seat allowance 50: 39 ok, 40 warning, 47 warning, 48 critical, 50 exceeded, 80 exceeded.
    org = org_with_usage(session, [0, 39, 40, 47, 48, 50, 80])
    summary = get_org_usage_summary(session, org, organization_period(org, NOW))
    assert summary.members_per_level == {
        WarningLevel.OK: 2,
        WarningLevel.WARNING: 2,
        WarningLevel.CRITICAL: 1,
        WarningLevel.EXCEEDED: 2,
    }
    levels = {r.used: r.warning_level for r in summary.rows}
    assert levels[48] is WarningLevel.CRITICAL and levels[39] is WarningLevel.OK
    share = {r.used: r.share_percent for r in summary.rows}
    assert str(share[80]) == "8.0"  # 80 of the pool's 1,000


def test_members_can_be_sorted_filtered_and_paged(session: Session) -> None:
    org = org_with_usage(session, [5, 0, 12, 7])
    period = organization_period(org, NOW)
    by_name = get_org_usage_summary(session, org, period, sort=MemberSort.NAME, descending=False)
    assert [r.display_name for r in by_name.rows] == [
        "Member 00",
        "Member 01",
        "Member 02",
        "Member 03",
    ]
    by_use = get_org_usage_summary(session, org, period, sort=MemberSort.USED, descending=False)
    assert [r.used for r in by_use.rows] == [0, 5, 7, 12]
    latest = get_org_usage_summary(session, org, period, sort=MemberSort.LAST_ACTIVITY)
    assert latest.rows[-1].last_used_at is None  # no activity sorts last
    filtered = get_org_usage_summary(session, org, period, search="M02@ORG")
    assert [r.email.split("@")[0] for r in filtered.rows] == ["m02"]
    assert filtered.matching_members == 1 and filtered.member_count == 4
    second_page = get_org_usage_summary(session, org, period, page=2, page_size=3)
    assert [r.used for r in second_page.rows] == [0]


def test_filter_treats_wildcards_literally(session: Session) -> None:
    org = org_with_usage(session, [1, 2])
    summary = get_org_usage_summary(session, org, organization_period(org, NOW), search="%")
    assert summary.rows == [] and summary.matching_members == 0


def test_past_periods_show_their_own_usage(session: Session) -> None:
    org = org_with_usage(session, [10])
    next_period = organization_period(org, NOW).next()
    summary = get_org_usage_summary(session, org, next_period)
    assert summary.members_used == 0 and summary.rows[0].used == 0


def test_statement_count_does_not_grow_with_members(session: Session) -> None:
    def statements_for(org: Organization) -> int:
        session.refresh(org)  # loading the organization itself is the caller's statement
        seen: list[str] = []
        listener = lambda *args: seen.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            get_org_usage_summary(session, org, organization_period(org, NOW))
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        return len(seen)

    small = org_with_usage(session, [1, 2])
    large = org_with_usage(session, list(range(40)), seats=40)
    assert statements_for(small) == statements_for(large) <= 4


def test_bad_paging_is_refused(session: Session) -> None:
    org = org_with_usage(session, [1])
    with pytest.raises(ValueError, match="page"):
        get_org_usage_summary(session, org, organization_period(org, NOW), page=0)
