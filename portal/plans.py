"""The canonical plan catalogue, usage thresholds and warning levels.

This module is the only place in the code base where a quota, a price or an
overage rate is written down. Everything else (recording, pages, the API, the
Stripe reporter, demo data) asks it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal


class PlanKind(enum.StrEnum):
    INDIVIDUAL = "individual"
    ORGANIZATION = "organization"


@dataclass(frozen=True)
class Plan:
    """A plan as sold: what it costs, what it includes and what overage costs.

    Amounts are euro cents. Organization plans are priced and sized per seat,
    and their included suggestions are pooled across all members.
    """

    id: str
    name: str
    kind: PlanKind
    price_cents: int
    included_per_seat: int
    overage_rate_cents: int | None
    """Price of each suggestion over the included amount; ``None`` is a hard cap."""

    @property
    def is_hard_capped(self) -> bool:
        return self.overage_rate_cents is None

    @property
    def is_paid(self) -> bool:
        return self.price_cents > 0

    def included_for(self, seats: int = 1) -> int:
        """Suggestions included in one billing period for ``seats`` seats."""
        if seats < 1:
            raise ValueError(f"a plan needs at least one seat, got {seats}")
        return self.included_per_seat * (seats if self.kind is PlanKind.ORGANIZATION else 1)

    def overage_cost_cents(self, overage: int) -> int:
        """What ``overage`` suggestions over the included amount cost."""
        return 0 if self.overage_rate_cents is None else overage * self.overage_rate_cents


FREE = Plan("free", "Free", PlanKind.INDIVIDUAL, 0, 5, None)
STARTER = Plan("starter", "Starter", PlanKind.INDIVIDUAL, 900, 25, 35)
PRO = Plan("pro", "Pro", PlanKind.INDIVIDUAL, 1500, 75, 30)
TEAM = Plan("team", "Team", PlanKind.ORGANIZATION, 1200, 50, 25)
BUSINESS = Plan("business", "Business", PlanKind.ORGANIZATION, 1800, 100, 20)

PLANS: dict[str, Plan] = {plan.id: plan for plan in (FREE, STARTER, PRO, TEAM, BUSINESS)}
INDIVIDUAL_PLAN_IDS = tuple(p.id for p in PLANS.values() if p.kind is PlanKind.INDIVIDUAL)
ORGANIZATION_PLAN_IDS = tuple(p.id for p in PLANS.values() if p.kind is PlanKind.ORGANIZATION)


def get_plan(plan_id: str) -> Plan:
    """The plan with this id; ``KeyError`` names the unknown id."""
    try:
        return PLANS[plan_id]
    except KeyError:
        raise KeyError(f"unknown plan {plan_id!r}; known plans: {', '.join(PLANS)}") from None


# Thresholds as fractions of the included amount. Percentages are compared as
# exact fractions (used * 100 >= 80 * included) so 79.99 % is never "warning".
WARNING_PERCENT = 80
CRITICAL_PERCENT = 95
HARD_CAP_PERCENT = 100


class WarningLevel(enum.StrEnum):
    """Where usage stands against the included amount.

    ``ok`` < 80 % <= ``warning`` < 95 % <= ``critical`` < 100 % <= ``exceeded``.
    """

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    EXCEEDED = "exceeded"


# Lower bound (percent of included) of each level, highest first; the SQL that
# counts members per level is built from this same table.
LEVEL_FLOORS: tuple[tuple[WarningLevel, int], ...] = (
    (WarningLevel.EXCEEDED, HARD_CAP_PERCENT),
    (WarningLevel.CRITICAL, CRITICAL_PERCENT),
    (WarningLevel.WARNING, WARNING_PERCENT),
    (WarningLevel.OK, 0),
)


def warning_level(used: int, included: int) -> WarningLevel:
    """The warning level of ``used`` suggestions against ``included`` ones."""
    if included <= 0:
        return WarningLevel.EXCEEDED if used > 0 else WarningLevel.OK
    for level, floor in LEVEL_FLOORS:
        if used * 100 >= floor * included:
            return level
    return WarningLevel.OK


def percent_used(used: int, included: int) -> Decimal:
    """Usage as a percentage of the included amount, one decimal, not capped at 100."""
    if included <= 0:
        return Decimal(0) if used == 0 else Decimal(100)
    return (Decimal(used * 100) / Decimal(included)).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class UsageFigures:
    """Usage against an allowance on a plan: the one arithmetic of percent, level and overage.

    The live status, each period of history and an organization's pool are
    all this, with more around it.
    """

    plan: Plan
    used: int
    included: int

    @property
    def remaining(self) -> int:
        return max(0, self.included - self.used)

    @property
    def percent(self) -> Decimal:
        return percent_used(self.used, self.included)

    @property
    def warning_level(self) -> WarningLevel:
        return warning_level(self.used, self.included)

    @property
    def overage_count(self) -> int:
        """Suggestions over the included amount that are billed; none on a hard cap."""
        return 0 if self.plan.is_hard_capped else max(0, self.used - self.included)

    @property
    def overage_cost_cents(self) -> int:
        return self.plan.overage_cost_cents(self.overage_count)


# Event types the assistant records. Only quota-consuming ones count against
# the plan and are billed; a refinement of a suggestion is recorded for the
# record but free, as in the original assistant.
EVENT_TYPES: dict[str, bool] = {
    "suggestion": True,
    "refinement": False,
}
DEFAULT_EVENT_TYPE = "suggestion"
QUOTA_EVENT_TYPES = tuple(name for name, counts in EVENT_TYPES.items() if counts)

# Stripe prices name their plan by lookup key: the licensed price (flat, or per
# seat) by the plan's id, and the metered price for usage by "<plan>_usage".
# An operator whose prices carry other keys maps them here, once.
PRICE_LOOKUP_KEYS: dict[str, str] = {plan.id: plan.id for plan in PLANS.values() if plan.is_paid}
"""Lookup key of a subscription's licensed price -> the plan it stands for."""
USAGE_PRICE_SUFFIX = "_usage"


def plan_for_price(lookup_key: str | None) -> Plan | None:
    """The plan a licensed price stands for, by its lookup key; ``None`` for another price."""
    plan_id = PRICE_LOOKUP_KEYS.get(lookup_key or "")
    return PLANS[plan_id] if plan_id is not None else None


def price_lookup_keys(plan: Plan) -> tuple[str, str]:
    """The lookup keys of a paid plan's licensed price and its metered usage price."""
    licensed = next(key for key, plan_id in PRICE_LOOKUP_KEYS.items() if plan_id == plan.id)
    return licensed, plan.id + USAGE_PRICE_SUFFIX


# What a customer who hits a plan's cap is offered instead.
UPGRADES: dict[str, str] = {"free": "starter", "starter": "pro"}


def upgrade_for(plan: Plan) -> Plan | None:
    """The plan to suggest when ``plan``'s allowance runs out, if any."""
    upgrade = UPGRADES.get(plan.id)
    return PLANS[upgrade] if upgrade else None


def upgrades_from(plan: Plan) -> list[Plan]:
    """The individual paid plans a user on ``plan`` may move up to, cheapest first."""
    return [
        other
        for other in PLANS.values()
        if other.kind is PlanKind.INDIVIDUAL and other.price_cents > plan.price_cents
    ]
