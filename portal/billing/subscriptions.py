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
holds the subscription's id, else the one that holds its customer.

Which subscription a subject follows when Stripe has several for it (a
customer who canceled and subscribed again, a Checkout paid twice): one rule,
``supersedes``, for the webhook and ``flask sync-subscriptions`` alike. A
subscription only ever changes the subject that holds it; a different one
takes its place only when it is live and the held one is not, or is newer
(Stripe's ``created``). So an old, canceled subscription, listed by
``sync-subscriptions`` or named by a late event, never moves a paying
customer back onto it.

This module takes the subscription object as the webhook or
``sync-subscriptions`` fetched it, and asks Stripe (``SubscriptionSource``)
only about the subscription a subject already holds, when the rule needs its
age.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.billing.refile import refile_usage
from portal.models import LIVE_SUBSCRIPTION_STATUSES, Organization, User, UserSubscription
from portal.plans import Plan, PlanKind, plan_for_price
from portal.usage.subjects import SubjectKind

SUBJECT_METADATA = "portal_subject"
"""The subscription's metadata key that names its billing subject ("user:12")."""


class NotUnderstood(ValueError):
    """The subscription has no licensed price the portal knows: it names no plan."""


class SubscriptionSource(Protocol):
    """Where a subscription's current state comes from (Stripe, or its stand-in)."""

    def retrieve_subscription(self, subscription_id: str) -> Mapping[str, Any] | None:
        """The subscription as Stripe has it now; ``None`` if Stripe does not know it.

        Raises ``StripeUnavailable`` when Stripe cannot be asked.
        """
        ...


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
    created: datetime | None
    plan: Plan
    seats: int
    anchor: datetime
    period_start: datetime
    period_end: datetime
    cancel_at_period_end: bool
    trial_end: datetime | None
    named_subject: SubjectRef | None

    @property
    def is_live(self) -> bool:
        """Active, trialing or past due: it grants its plan (``usage.subjects``)."""
        return self.status in LIVE_SUBSCRIPTION_STATUSES


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
        created=_moment(stripe_object.get("created")),
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
    IGNORED = "ignored"
    """Not the subscription its subject follows (``supersedes``); the message says why."""
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


@dataclass(frozen=True)
class HeldSubscription:
    """The subscription a subject holds, as far as ``supersedes`` needs it."""

    id: str
    status: str
    created: datetime | None
    """Stripe's ``created``; ``None`` when Stripe no longer knows the subscription."""


def supersedes(incoming: Subscription, held: HeldSubscription | None) -> str | None:
    """Why ``incoming`` may not be applied to a subject holding ``held``; ``None`` if it may.

    The one rule for every path that applies a subscription. The held
    subscription itself always applies (its own updates, its end). Any other
    one applies only when it is live, and the subject holds none of Stripe's,
    or one that has ended, or an older one; ties of ``created`` go to the
    greater id, so the outcome never depends on the order events arrive in.
    An ended subscription thus never changes a subject that does not hold it
    (nor a plan an operator made by hand for a customer that has old ones).
    """
    if held is not None and held.id == incoming.id:
        return None
    if not incoming.is_live:
        follows = f"follows {held.id}" if held is not None else "holds none of Stripe's"
        return f"{incoming.id} has ended ({incoming.status}); the subject {follows}"
    if held is None or held.status not in LIVE_SUBSCRIPTION_STATUSES or held.created is None:
        return None
    if incoming.created is not None and (incoming.created, incoming.id) > (held.created, held.id):
        return None
    return (
        f"{incoming.id} is live but older than {held.id}, which the subject follows: "
        "two live subscriptions (cancel one in Stripe)"
    )


def apply_subscription(
    session: Session,
    subscription: Subscription,
    stripe: SubscriptionSource,
    now: datetime,
    *,
    named: SubjectRef | None = None,
) -> Applied:
    """Bring the subject's subscription in line with Stripe's; the caller commits.

    A live subscription's period also takes the subject's usage that occurred
    in it but was recorded in an earlier period, while the portal did not know
    of it yet (``refile.refile_usage``).

    The subject's row is locked first (``FOR NO KEY UPDATE``, which recording's
    foreign-key checks do not wait for), so two deliveries about one subject
    apply one after the other. ``stripe`` is asked about the subscription the
    subject holds when ``supersedes`` needs its age; ``StripeUnavailable``
    goes to the caller.
    """
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
        row = _locked(session, select(Organization).where(Organization.id == subject.id))
        if row is None:
            return Applied(Outcome.UNMATCHED, message=f"{subject} does not exist")
        held_status = row.subscription_status
        fields = {"subscription_status": subscription.status, "seats": subscription.seats}
    else:
        if session.get(User, subject.id) is None:
            return Applied(Outcome.UNMATCHED, message=f"{subject} does not exist")
        row = _locked(
            session, select(UserSubscription).where(UserSubscription.user_id == subject.id)
        )
        held_status = row.status if row is not None else None
        fields = {"status": subscription.status}
    held = None
    if row is not None and row.stripe_subscription_id is not None and held_status is not None:
        governs = _governs(held_status, row.cancel_at_period_end, row.current_period_end, now)
        # Stripe may be asked here: nothing is written before it answers.
        held = _held(row.stripe_subscription_id, held_status, governs, subscription, stripe)
    refused = supersedes(subscription, held)
    if refused is not None:
        return Applied(Outcome.IGNORED, subject, message=refused)
    if row is None:
        row = UserSubscription(user_id=subject.id)
        session.add(row)
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
    if subscription.is_live:
        # Every time, not only when the period changes: usage recorded under the
        # old period while this ran is moved by the next delivery or sync.
        seats = subscription.seats if subject.kind is SubjectKind.ORGANIZATION else 1
        period = (subscription.period_start, subscription.period_end)
        included = subscription.plan.included_for(seats)
        moved = refile_usage(
            session, subject.kind, subject.id, period, subscription.plan, included, now
        )
        if moved:
            changes["usage moved into the period"] = (0, moved)
    return Applied(Outcome.APPLIED if changes else Outcome.UNCHANGED, subject, changes)


def _locked(session: Session, query: Any) -> Any:
    """The row ``query`` selects, read afresh and locked against other appliers."""
    return session.scalars(
        query.with_for_update(key_share=True).execution_options(populate_existing=True)
    ).one_or_none()


def _governs(
    status: str, cancel_at_period_end: bool, period_end: datetime | None, now: datetime
) -> bool:
    """Whether a subscription the portal holds governs at ``now``, as ``usage.subjects``
    (``_live``) decides: a live status, and not past the end of a period it was canceled at."""
    ended = cancel_at_period_end and period_end is not None and period_end <= now
    return status in LIVE_SUBSCRIPTION_STATUSES and not ended


def _held(
    held_id: str,
    status: str,
    governs: bool,
    incoming: Subscription,
    stripe: SubscriptionSource,
) -> HeldSubscription:
    """The subscription the subject holds; Stripe is asked only when the rule needs it.

    Only a live incoming subscription facing a different one that still
    governs in the portal needs the held one's age, and its current status
    (the portal's copy may lag): one request, in the rare case of two live
    subscriptions or of events crossing each other. One that no longer
    governs (ended, or canceled at a period's end now past) is ended.
    """
    if held_id == incoming.id or not incoming.is_live:
        return HeldSubscription(held_id, status, None)
    if not governs:
        return HeldSubscription(held_id, "canceled", None)
    current = stripe.retrieve_subscription(held_id)
    if current is None:
        return HeldSubscription(held_id, "canceled", None)
    return HeldSubscription(held_id, str(current["status"]), _moment(current.get("created")))


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


def organization_subscribed(org: Organization, now: datetime) -> bool:
    """Whether the organization has a Stripe subscription that governs at ``now``: then it
    manages that one, and may not start another.

    A plan made by hand (``flask create-org``, no Stripe subscription) is how
    an organization starts, and does not stop it from subscribing.
    """
    governs = _governs(
        org.subscription_status, org.cancel_at_period_end, org.current_period_end, now
    )
    return org.stripe_subscription_id is not None and governs


def customer_of(session: Session, subject: SubjectRef) -> str | None:
    """The Stripe customer of a user's own subscription or of an organization."""
    if subject.kind is SubjectKind.ORGANIZATION:
        return session.scalar(
            select(Organization.stripe_customer_id).where(Organization.id == subject.id)
        )
    return session.scalar(
        select(UserSubscription.stripe_customer_id).where(UserSubscription.user_id == subject.id)
    )
