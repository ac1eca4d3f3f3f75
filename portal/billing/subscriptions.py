"""Subscriptions as Stripe has them, applied to the portal's billing subjects.

What a subscription means here:

- its **plan** is the plan whose id is the ``lookup_key`` of its licensed (flat
  or per-seat) price (``plans.PRICE_LOOKUP_KEYS``); its **seats** are that
  item's quantity;
- its **status** is Stripe's: active, trialing and past_due are live;
  canceled, unpaid and incomplete_expired end it, and the user falls back to
  an organization's pool or the free plan (``usage.subjects``);
- its **period** is the licensed item's ``current_period_start`` /
  ``current_period_end``, its anchor the subscription's
  ``billing_cycle_anchor``; ``cancel_at_period_end`` and ``trial_end`` are kept
  to be shown.

Which subject a subscription belongs to: the one named when the checkout
started (``client_reference_id`` and the subscription's ``portal_subject``
metadata, "user:<id>" or "organization:<id>"), else the subject that already
holds the subscription's id, else the one that holds its customer. This
module never calls Stripe: it takes the subscription object as the webhook or
``flask sync-subscriptions`` fetched it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.models import Organization, User, UserSubscription
from portal.plans import Plan, PlanKind, plan_for_price
from portal.usage.subjects import SubjectKind

SUBJECT_METADATA = "portal_subject"
"""The subscription's metadata key that names its billing subject ("user:12")."""


class NotUnderstood(ValueError):
    """The subscription has no licensed price the portal knows: it names no plan."""


@dataclass(frozen=True)
class SubjectRef:
    """A billing subject as a checkout names it: ``user:12`` or ``organization:3``."""

    kind: SubjectKind
    id: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: object) -> SubjectRef | None:
        """The subject ``text`` names, or ``None`` for anything else."""
        if not isinstance(text, str):
            return None
        kind, _, number = text.partition(":")
        if kind not in tuple(SubjectKind) or not (number.isascii() and number.isdigit()):
            return None
        if len(number) > 9:
            return None
        return cls(SubjectKind(kind), int(number))


@dataclass(frozen=True)
class Subscription:
    """What the portal keeps of one Stripe subscription."""

    id: str
    customer_id: str
    status: str
    plan: Plan
    seats: int
    anchor: datetime
    period_start: datetime
    period_end: datetime
    cancel_at_period_end: bool
    trial_end: datetime | None
    named_subject: SubjectRef | None


def _moment(seconds: object) -> datetime | None:
    return datetime.fromtimestamp(int(seconds), UTC) if isinstance(seconds, int) else None


def read_subscription(stripe_object: Mapping[str, Any]) -> Subscription:
    """The subscription a Stripe subscription object describes; ``NotUnderstood`` otherwise."""
    items = stripe_object.get("items", {}).get("data", [])
    licensed = [
        item
        for item in items
        if item.get("price", {}).get("recurring", {}).get("usage_type") != "metered"
    ]
    plans = [(item, plan_for_price(item["price"].get("lookup_key"))) for item in licensed]
    known = [(item, plan) for item, plan in plans if plan is not None]
    if len(known) != 1:
        keys = [item.get("price", {}).get("lookup_key") for item in licensed]
        raise NotUnderstood(
            f"subscription {stripe_object.get('id')} has licensed prices {keys}: "
            "not exactly one with a plan's lookup key"
        )
    item, plan = known[0]
    start, end = _moment(item.get("current_period_start")), _moment(item.get("current_period_end"))
    if start is None or end is None:
        raise NotUnderstood(f"subscription {stripe_object.get('id')} has no current period")
    metadata = stripe_object.get("metadata") or {}
    return Subscription(
        id=str(stripe_object["id"]),
        customer_id=str(stripe_object["customer"]),
        status=str(stripe_object["status"]),
        plan=plan,
        seats=int(item.get("quantity") or 1),
        anchor=_moment(stripe_object.get("billing_cycle_anchor")) or start,
        period_start=start,
        period_end=end,
        cancel_at_period_end=bool(stripe_object.get("cancel_at_period_end")),
        trial_end=_moment(stripe_object.get("trial_end")),
        named_subject=SubjectRef.parse(metadata.get(SUBJECT_METADATA)),
    )


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    UNMATCHED = "unmatched"
    """No user or organization of the portal holds this subscription or customer."""
    FAILED = "failed"
    """It cannot apply (an organization's plan on a user, say); the message says why."""


@dataclass(frozen=True)
class Applied:
    outcome: Outcome
    subject: SubjectRef | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """Field -> (before, after), for what changed."""
    message: str = ""


def apply_subscription(
    session: Session, subscription: Subscription, *, named: SubjectRef | None = None
) -> Applied:
    """Bring the subject's subscription in line with Stripe's; the caller commits."""
    subject = named or subscription.named_subject or _holder(session, subscription)
    if subject is None:
        return Applied(
            Outcome.UNMATCHED,
            message=f"no user or organization holds {subscription.id} "
            f"or customer {subscription.customer_id}",
        )
    wanted = (
        PlanKind.ORGANIZATION if subject.kind is SubjectKind.ORGANIZATION else PlanKind.INDIVIDUAL
    )
    if subscription.plan.kind is not wanted:
        return Applied(
            Outcome.FAILED,
            subject,
            message=f"the {subscription.plan.id} plan is not for a {subject.kind}",
        )
    row: UserSubscription | Organization | None
    if subject.kind is SubjectKind.ORGANIZATION:
        row = session.get(Organization, subject.id)
        fields = {"subscription_status": subscription.status, "seats": subscription.seats}
    else:
        user = session.get(User, subject.id)
        row = None if user is None else user.subscription
        if user is not None and row is None:
            row = UserSubscription(user_id=user.id)
            session.add(row)
        fields = {"status": subscription.status}
    if row is None:
        return Applied(Outcome.UNMATCHED, message=f"{subject} does not exist")
    fields |= {
        "plan_id": subscription.plan.id,
        "stripe_customer_id": subscription.customer_id,
        "stripe_subscription_id": subscription.id,
        "billing_anchor": subscription.anchor,
        "current_period_start": subscription.period_start,
        "current_period_end": subscription.period_end,
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "trial_end": subscription.trial_end,
    }
    changes = {
        name: (getattr(row, name, None), value)
        for name, value in fields.items()
        if getattr(row, name, None) != value
    }
    for name, value in fields.items():
        setattr(row, name, value)
    session.flush()
    return Applied(Outcome.APPLIED if changes else Outcome.UNCHANGED, subject, changes)


def _holder(session: Session, subscription: Subscription) -> SubjectRef | None:
    """The subject that holds this subscription, or failing that its customer."""
    for by in ("stripe_subscription_id", "stripe_customer_id"):
        value = subscription.id if by == "stripe_subscription_id" else subscription.customer_id
        user_id = session.scalar(
            select(UserSubscription.user_id).where(getattr(UserSubscription, by) == value)
        )
        if user_id is not None:
            return SubjectRef(SubjectKind.USER, user_id)
        org_id = session.scalar(select(Organization.id).where(getattr(Organization, by) == value))
        if org_id is not None:
            return SubjectRef(SubjectKind.ORGANIZATION, org_id)
    return None


def customer_of(session: Session, subject: SubjectRef) -> str | None:
    """The Stripe customer of a user's own subscription or of an organization."""
    if subject.kind is SubjectKind.ORGANIZATION:
        return session.scalar(
            select(Organization.stripe_customer_id).where(Organization.id == subject.id)
        )
    return session.scalar(
        select(UserSubscription.stripe_customer_id).where(UserSubscription.user_id == subject.id)
    )
