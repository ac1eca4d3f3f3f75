"""Reconciling with Stripe: ``flask sync-subscriptions`` repairs what a lost webhook left stale.

It lists every subscription of the Stripe account and applies each exactly
as a webhook would (``billing.subscriptions``, whose ``supersedes`` decides
which of a subject's subscriptions it follows): applying the same state
twice changes nothing, so the command may run as often as wanted (cron,
daily). Then each event still pending (Stripe could not be asked when it
came) is handled as its delivery would have been, with its real outcome
(``webhooks.handle_pending_events``); ``--pending-only`` does just that,
cheaply enough to run every few minutes.

Stripe lists subscriptions of every status, newest first, years of them. An
ended one that no subject follows is ignored, not a problem: the account's
history. Problems (exit 1) are subscriptions that should govern someone and
do not: live ones nobody holds, ones the portal cannot read, a live one
older than another live one of the same subject (the customer pays twice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from portal.billing.subscriptions import (
    NotUnderstood,
    Outcome,
    SubscriptionSource,
    apply_subscription,
    read_subscription,
)
from portal.billing.webhooks import EventSource, handle_pending_events
from portal.models import LIVE_SUBSCRIPTION_STATUSES


class SubscriptionLister(EventSource, Protocol):
    def list_subscriptions(self) -> Iterator[Mapping[str, Any]]: ...


class _Listed:
    """Stripe as the listing showed it: a subscription already listed is not fetched again.

    The rule (``supersedes``) asks about the subscription a subject holds only
    when another live one comes; listed newest first, the held one has been
    listed when it is the newer. Only the status and creation time the rule
    reads are kept, not every listed object.
    """

    def __init__(self, stripe: SubscriptionSource) -> None:
        self._stripe = stripe
        self._seen: dict[str, Mapping[str, Any]] = {}

    def saw(self, stripe_object: Mapping[str, Any]) -> None:
        self._seen[str(stripe_object.get("id"))] = {
            "status": stripe_object.get("status"),
            "created": stripe_object.get("created"),
        }

    def retrieve_subscription(self, subscription_id: str) -> Mapping[str, Any] | None:
        if subscription_id in self._seen:
            return self._seen[subscription_id]
        return self._stripe.retrieve_subscription(subscription_id)


@dataclass
class SyncSummary:
    """What one reconciliation found and did."""

    outcomes: Counter[str] = field(default_factory=Counter)
    """Subscriptions per outcome: applied (changed), unchanged, ignored, unmatched, failed."""
    problems: list[str] = field(default_factory=list)
    """One line per subscription that should govern a subject and does not."""
    changes: list[str] = field(default_factory=list)
    """One line per subscription whose subject changed."""
    pending_events: Counter[str] = field(default_factory=Counter)
    """Events that were still pending, per the outcome they got now."""

    @property
    def exit_code(self) -> int:
        """0: every subscription that should govern a subject does; 1: a problem."""
        return 1 if self.problems else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "subscriptions": sum(self.outcomes.values()),
            "outcomes": {str(outcome): self.outcomes[str(outcome)] for outcome in Outcome},
            "changes": self.changes,
            "problems": self.problems,
            "pending_events": dict(self.pending_events),
            "exit_code": self.exit_code,
        }


def sync_subscriptions(
    session: Session, stripe: SubscriptionLister, now: datetime, *, pending_only: bool = False
) -> SyncSummary:
    """Apply every subscription Stripe has, then handle the events still pending.

    ``pending_only`` skips the listing. The caller commits. ``StripeUnavailable``
    from the listing goes to the caller, with nothing applied that the caller
    does not commit; a pending event Stripe cannot be asked about stays
    pending, and is a problem.
    """
    summary = SyncSummary()
    if not pending_only:
        _apply_listed(session, stripe, summary, now)
    pending = handle_pending_events(session, stripe, now)
    summary.pending_events = pending.outcomes
    summary.problems.extend(pending.left)
    return summary


def _apply_listed(
    session: Session, stripe: SubscriptionLister, summary: SyncSummary, now: datetime
) -> None:
    listed = _Listed(stripe)
    for stripe_object in stripe.list_subscriptions():
        listed.saw(stripe_object)
        try:
            subscription = read_subscription(stripe_object)
        except NotUnderstood as error:
            ended = stripe_object.get("status") not in LIVE_SUBSCRIPTION_STATUSES
            summary.outcomes[Outcome.IGNORED if ended else Outcome.FAILED] += 1
            if not ended:
                summary.problems.append(f"{stripe_object.get('id')}: {error}")
            continue
        applied = apply_subscription(session, subscription, listed, now)
        outcome = applied.outcome
        if outcome in (Outcome.UNMATCHED, Outcome.FAILED) and not subscription.is_live:
            outcome = Outcome.IGNORED  # history: it governs nobody whatever the portal does
        summary.outcomes[outcome] += 1
        if outcome in (Outcome.UNMATCHED, Outcome.FAILED) or (
            outcome is Outcome.IGNORED and subscription.is_live
        ):
            summary.problems.append(f"{subscription.id}: {applied.message}")
        elif applied.changes:
            changed = ", ".join(
                f"{name} {before} -> {after}" for name, (before, after) in applied.changes.items()
            )
            summary.changes.append(f"{subscription.id} ({applied.subject}): {changed}")
