from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from portal.accounts import add_member
from portal.plans import BUSINESS, FREE, PRO, STARTER, TEAM
from portal.usage import SubjectKind, UnknownUser, resolve_effective_plan
from tests.factories import T0, make_org, make_user


def test_user_without_subscription_or_organization_is_free(session: Session) -> None:
    user = make_user(session)
    effective = resolve_effective_plan(session, user.id, T0)
    assert effective.plan is FREE
    assert effective.subject.kind is SubjectKind.USER and effective.subject.id == user.id
    assert effective.anchor is None  # calendar months


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_live_individual_subscription_gives_its_plan(session: Session, status: str) -> None:
    user = make_user(session, plan="starter", status=status)
    effective = resolve_effective_plan(session, user.id, T0)
    assert effective.plan is STARTER
    assert effective.included == 25
    assert effective.anchor == T0


@pytest.mark.parametrize("status", ["canceled", "paused"])
def test_ended_individual_subscription_falls_back_to_free(session: Session, status: str) -> None:
    user = make_user(session, plan="pro", status=status)
    assert resolve_effective_plan(session, user.id, T0).plan is FREE


def test_member_draws_on_the_organization_pool(session: Session) -> None:
    org = make_org(session, plan="business", seats=7)
    user = make_user(session, org=org)
    effective = resolve_effective_plan(session, user.email.upper(), T0)
    assert effective.plan is BUSINESS
    assert effective.subject.kind is SubjectKind.ORGANIZATION
    assert effective.subject.id == org.id
    assert effective.included == 700


def test_individual_subscription_wins_over_membership(session: Session) -> None:
    org = make_org(session)
    user = make_user(session, plan="pro", org=org)
    effective = resolve_effective_plan(session, user.id, T0)
    assert effective.plan is PRO and effective.subject.kind is SubjectKind.USER


def test_member_of_a_canceled_organization_is_free(session: Session) -> None:
    org = make_org(session, status="canceled")
    user = make_user(session, org=org)
    assert resolve_effective_plan(session, user.id, T0).plan is FREE


def test_member_of_several_organizations_uses_the_one_joined_first(session: Session) -> None:
    first = make_org(session, plan="team")
    second = make_org(session, plan="business")
    user = make_user(session, org=first)
    add_member(session, user, second, "admin", T0)
    effective = resolve_effective_plan(session, user.id, T0)
    assert effective.plan is TEAM and effective.subject.id == first.id

    # When the first organization's subscription ends, the next one takes over.
    first.subscription_status = "canceled"
    session.flush()
    assert resolve_effective_plan(session, user.id, T0).subject.id == second.id


def test_unknown_user_is_reported(session: Session) -> None:
    with pytest.raises(UnknownUser):
        resolve_effective_plan(session, "nobody@example.com", T0)
