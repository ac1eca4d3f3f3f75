"""A realistic demo data set, so a newcomer's first ``make run`` shows a living portal.

Users on every plan, a team and a business organization with 30 members
between them at every warning level, a year of history, and recent billable
usage not yet reported to Stripe. Usage goes through the same recording code
as production, dated in the past.
"""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from portal.accounts import create_organization, create_user
from portal.models import UsageEvent, User, usage_report_backlog
from portal.periods import add_months
from portal.plans import get_plan
from portal.usage.recording import record_for
from portal.usage.requests import UsageRequest
from portal.usage.subjects import resolve_effective_plan

DEMO_PASSWORD = "demo-password"
HISTORY_PERIODS = 12
UNREPORTED_WINDOW = timedelta(days=2)
"""Paid usage this recent is left for ``flask report-usage`` to send."""


@dataclass
class DemoResult:
    loaded: bool
    users: int = 0
    events: int = 0
    sign_ins: list[tuple[str, str]] = field(default_factory=list)


# (email, name, plan, status, anchor day, current-period share of the allowance)
INDIVIDUALS = [
    ("free@demo.example", "Fay Free", "free", "active", None, 0.8),
    ("capped@demo.example", "Cody Capped", "free", "active", None, 1.0),
    ("starter@demo.example", "Stella Starter", "starter", "active", 31, 0.88),
    ("pro@demo.example", "Pablo Pro", "pro", "active", 12, 1.2),
    ("trial@demo.example", "Tara Trial", "pro", "trialing", None, 0.3),
]

# Per-member usage this period as a share of one seat's allowance: every
# warning level is present in each organization.
ORGANIZATIONS = [
    (
        "acme",
        "Acme Robotics",
        "team",
        12,
        7,
        [0.6, 0.2, 0.4, 0.85, 0.9, 0.97, 1.1, 1.4, 0.0, 0.1, 0.3, 0.5],
    ),
    (
        "globex",
        "Globex Corporation",
        "business",
        20,
        21,
        [
            0.7,
            0.1,
            0.3,
            0.82,
            0.96,
            1.05,
            0.0,
            0.45,
            0.55,
            0.2,
            0.65,
            0.35,
            0.15,
            0.88,
            0.5,
            0.25,
            0.0,
            0.4,
        ],
    ),
]
FIRST_NAMES = [
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Luca",
    "Maya",
    "Nils",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Theo",
]
LAST_NAMES = ["Lovelace", "Okafor", "Martin", "Patel", "Rossi", "Nakamura", "Schmidt", "Silva"]


def _anchor(now: datetime, day: int, months_back: int) -> datetime:
    """A billing anchor ``months_back`` months ago on ``day`` (clamped), at 09:00 UTC."""
    month = add_months(now.replace(day=1, hour=9, minute=0, second=0, microsecond=0), -months_back)
    return month.replace(day=min(day, calendar.monthrange(month.year, month.month)[1]))


def seed_demo(session: Session, now: datetime) -> DemoResult:
    """Load the demo data into an empty database; on any other database do nothing."""
    if session.scalar(select(func.count()).select_from(User)):
        existing = set(session.scalars(select(User.email)))
        return DemoResult(loaded=False, sign_ins=[s for s in _sign_ins() if s[0] in existing])

    rng = random.Random(2026)
    # One hash serves every demo account: hashing is deliberately slow.
    password_hash = generate_password_hash(DEMO_PASSWORD)
    result = DemoResult(loaded=True, sign_ins=_sign_ins())
    targets: list[tuple[int, float, float]] = []  # (user id, current share, history share)

    for email, name, plan, status, day, share in INDIVIDUALS:
        if status == "trialing":
            anchor: datetime | None = now - timedelta(days=9)
        else:
            anchor = _anchor(now, day, 13) if day is not None else None
        user = create_user(
            session,
            email=email,
            password=None,
            display_name=name,
            plan_id=plan,
            subscription_status=status,
            stripe_customer_id=None if plan == "free" else f"cus_demo{len(targets) + 1:03d}",
            billing_anchor=anchor,
            now=anchor or now - timedelta(days=400),
        )
        user.password_hash = password_hash
        targets.append((user.id, share, 0.7))

    for slug, org_name, plan, seats, day, shares in ORGANIZATIONS:
        anchor = _anchor(now, day, 13)
        org = create_organization(
            session,
            slug=slug,
            name=org_name,
            plan_id=plan,
            seats=seats,
            stripe_customer_id=f"cus_demo{slug}",
            billing_anchor=anchor,
            now=anchor,
        )
        for n, share in enumerate(shares):
            first, last = (
                FIRST_NAMES[(n + len(slug)) % len(FIRST_NAMES)],
                LAST_NAMES[n % len(LAST_NAMES)],
            )
            user = create_user(
                session,
                email=_member_email(slug, n),
                password=None,
                display_name=f"{first} {last}",
                organization=org,
                role="admin" if n == 0 else "member",
                now=anchor,
            )
            user.password_hash = password_hash
            targets.append((user.id, share, rng.uniform(0.3, 1.1)))
    session.flush()

    for user_id, share, history_share in targets:
        result.events += _backfill(session, rng, user_id, share, history_share, now)
    result.users = len(targets)

    # Everything older than a couple of days was reported (or, if free,
    # passed over) long ago, before this portal's reporter: it leaves the
    # backlog, so `flask usage-status` shows only the last couple of days'
    # usage as waiting.
    session.execute(
        delete(usage_report_backlog).where(
            usage_report_backlog.c.event_id.in_(
                select(UsageEvent.id).where(UsageEvent.recorded_at < now - UNREPORTED_WINDOW)
            )
        )
    )
    session.flush()
    return result


def _backfill(
    session: Session,
    rng: random.Random,
    user_id: int,
    current_share: float,
    history_share: float,
    now: datetime,
) -> int:
    """Record a year of one user's usage, the current period reaching ``current_share``."""
    effective = resolve_effective_plan(session, user_id, now)
    plan = get_plan(effective.plan.id)
    allowance = plan.included_per_seat
    current = effective.period_at(now)
    created = 0
    for back in range(HISTORY_PERIODS - 1, -1, -1):
        period = current.shifted(-back)
        if back == 0:
            total, end = round(allowance * current_share), now - timedelta(minutes=5)
        else:
            total, end = round(allowance * history_share * rng.uniform(0.6, 1.2)), period.end
        start = max(period.start, now - timedelta(days=400))
        if total == 0 or end <= start:
            continue
        parts = min(total, rng.randint(3, 8))
        quantities = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
        moments = sorted(start + (end - start) * rng.random() for _ in quantities)
        for n, (quantity, moment) in enumerate(zip(quantities, moments, strict=True)):
            request = UsageRequest(
                f"demo-{user_id}-{back}-{n}", "suggestion", quantity, moment, None
            )
            if record_for(session, effective, request, moment).event_id is not None:
                created += 1
    return created


def _sign_ins() -> list[tuple[str, str]]:
    """One sign-in for each kind of user the portal shows differently."""
    kinds = {
        "free@demo.example": "free plan",
        "capped@demo.example": "free plan, at its cap",
        "starter@demo.example": "starter plan",
        "pro@demo.example": "pro plan, in overage",
        "trial@demo.example": "pro plan, trialing",
    }
    people = list(kinds.items())
    team_slug, team_name, team_plan, *_ = ORGANIZATIONS[0]
    people.append((_member_email(team_slug, 1), f"member of {team_name} ({team_plan})"))
    people += [
        (_member_email(slug, 0), f"admin of {name} ({plan})")
        for slug, name, plan, *_ in ORGANIZATIONS
    ]
    return people


def _member_email(slug: str, n: int) -> str:
    """The email of an organization's ``n``-th demo member; the first is its admin."""
    if n == 0:
        return f"admin@{slug}.example"
    first, last = FIRST_NAMES[(n + len(slug)) % len(FIRST_NAMES)], LAST_NAMES[n % len(LAST_NAMES)]
    return f"{first.lower()}.{last.lower()}@{slug}.example"
