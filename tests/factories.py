"""Small builders for test data, going through the same domain functions as the CLI."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from portal.accounts import create_organization, create_user
from portal.models import Organization, User

_counter = itertools.count(1)
T0 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=3)
"""Where every test's clock starts (``tests.conftest.clock``)."""


@dataclass
class FrozenClock:
    """``portal.clock.now`` during a test: it moves only when the test moves it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


def make_org(
    session: Session,
    *,
    plan: str = "team",
    seats: int = 2,
    anchor: datetime = T0,
    status: str = "active",
    customer: str | None = "cus_org",
) -> Organization:
    n = next(_counter)
    return create_organization(
        session,
        slug=f"org-{n}",
        name=f"Org {n}",
        plan_id=plan,
        seats=seats,
        now=anchor,
        billing_anchor=anchor,
        status=status,
        stripe_customer_id=f"{customer}{n}" if customer else None,
    )


def make_user(
    session: Session,
    *,
    plan: str = "free",
    anchor: datetime = T0,
    status: str = "active",
    org: Organization | None = None,
    role: str = "member",
    email: str | None = None,
    name: str | None = None,
    password: str | None = None,
) -> User:
    n = next(_counter)
    return create_user(
        session,
        email=email or f"user{n}@example.com",
        password=password,
        display_name=name,
        plan_id=plan,
        stripe_customer_id=f"cus_user{n}" if plan != "free" else None,
        subscription_status=status,
        billing_anchor=anchor,
        organization=org,
        role=role,
        now=anchor,
    )
