from __future__ import annotations

from decimal import Decimal

import pytest

from portal.plans import (
    BUSINESS,
    FREE,
    PLANS,
    PRO,
    STARTER,
    TEAM,
    WarningLevel,
    get_plan,
    percent_used,
    warning_level,
)


def test_catalogue_matches_the_published_price_list() -> None:
    table = {
        p.id: (p.price_cents, p.included_per_seat, p.overage_rate_cents) for p in PLANS.values()
    }
    assert table == {
        "free": (0, 5, None),
        "starter": (900, 25, 35),
        "pro": (1500, 75, 30),
        "team": (1200, 50, 25),
        "business": (1800, 100, 20),
    }


def test_organization_plans_pool_their_allowance_per_seat() -> None:
    assert TEAM.included_for(seats=12) == 600
    assert BUSINESS.included_for(seats=3) == 300
    # Individual plans ignore seats: one person, one allowance.
    assert PRO.included_for(seats=4) == 75


def test_free_is_hard_capped_and_paid_plans_bill_overage() -> None:
    assert FREE.is_hard_capped and not FREE.is_paid
    assert FREE.overage_cost_cents(10) == 0
    assert STARTER.overage_cost_cents(3) == 105
    assert not TEAM.is_hard_capped


@pytest.mark.parametrize(
    ("used", "included", "level"),
    [
        (0, 100, WarningLevel.OK),
        (79, 100, WarningLevel.OK),
        (80, 100, WarningLevel.WARNING),
        (94, 100, WarningLevel.WARNING),
        (95, 100, WarningLevel.CRITICAL),
        (99, 100, WarningLevel.CRITICAL),
        (100, 100, WarningLevel.EXCEEDED),
        (180, 100, WarningLevel.EXCEEDED),
        (3, 5, WarningLevel.OK),
        (4, 5, WarningLevel.WARNING),
        (5, 5, WarningLevel.EXCEEDED),
        # 19/25 = 76 %, 20/25 = 80 %: the boundary is exact, not rounded.
        (19, 25, WarningLevel.OK),
        (20, 25, WarningLevel.WARNING),
    ],
)
def test_warning_levels_follow_the_thresholds(
    used: int, included: int, level: WarningLevel
) -> None:
    assert warning_level(used, included) is level


def test_percent_is_not_capped_at_one_hundred() -> None:
    assert percent_used(150, 100) == Decimal("150.0")
    assert percent_used(1, 3) == Decimal("33.3")


def test_unknown_plan_is_named_in_the_error() -> None:
    with pytest.raises(KeyError, match="enterprise"):
        get_plan("enterprise")
