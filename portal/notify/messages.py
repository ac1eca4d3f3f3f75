"""What a usage notification says: the figures of one alert, for one recipient.

Both channels say the same: the email renders ``templates/email/usage_alert.*``
from an ``AlertMessage``, and the webhook sends ``payload()`` with the same
headline, so the assistant can tell the user in Slack in the portal's words.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from portal.plans import Plan, UsageFigures, WarningLevel
from portal.usage.subjects import SubjectKind

EVENT_TYPE = "usage.threshold_crossed"


@dataclass(frozen=True)
class Links:
    """Absolute addresses the message points to."""

    usage: str
    """The usage page of the subject: the user's own, or the organization's."""
    manage_billing: str | None
    """Where the Manage billing button is, for a paid plan and someone who may use it."""
    settings: str
    unsubscribe: str
    """The one-click unsubscribe (email only)."""


@dataclass(frozen=True)
class AlertMessage:
    event_id: uuid.UUID
    """The notification's id: the same on every attempt, so a receiver can drop repeats."""
    channel: str
    attempt: int
    """Which attempt at delivering it this is: 1 for the first."""
    threshold: int
    level: WarningLevel
    figures: UsageFigures
    period_start: datetime
    period_end: datetime
    detected_at: datetime
    subject_kind: SubjectKind
    subject_id: int
    organization_name: str | None
    organization_slug: str | None
    recipient_id: int
    recipient_email: str
    recipient_name: str
    recipient_manages_billing: bool
    """The recipient may open the billing portal for the subject: the user's own plan, or an
    organization's admin."""

    @property
    def lease(self) -> tuple[uuid.UUID, int]:
        """The outbox's name for this run's hold on the message (``outbox.Held``)."""
        return (self.event_id, self.attempt)

    @property
    def plan(self) -> Plan:
        return self.figures.plan

    @property
    def paused(self) -> bool:
        """The cap is reached on a plan without overage: suggestions stop until the reset."""
        return self.threshold == 100 and self.plan.is_hard_capped

    @property
    def overage_started(self) -> bool:
        return self.threshold == 100 and not self.plan.is_hard_capped

    @property
    def for_pool(self) -> bool:
        return self.subject_kind is SubjectKind.ORGANIZATION

    def payload(self, headline: str, links: Links) -> dict[str, Any]:
        """The webhook's JSON body: the figures, the period and the words of the email."""
        figures = self.figures
        return {
            "id": str(self.event_id),
            "type": EVENT_TYPE,
            "created": self.detected_at,
            "threshold": self.threshold,
            "level": self.level.value,
            "text": headline,
            "subject": {
                "kind": self.subject_kind.value,
                "id": self.subject_id,
                "organization": (
                    {"slug": self.organization_slug, "name": self.organization_name}
                    if self.for_pool
                    else None
                ),
            },
            "recipient": {
                "user_id": self.recipient_id,
                "email": self.recipient_email,
                "name": self.recipient_name,
            },
            "usage": {
                "plan": self.plan.id,
                "used": figures.used,
                "included": figures.included,
                "percent": figures.percent,
                "paused": self.paused,
                "overage": figures.overage_count,
                "overage_rate_cents": self.plan.overage_rate_cents,
                "currency": "eur",
            },
            "period": {"start": self.period_start, "end": self.period_end},
            "links": {"usage": links.usage, "manage_billing": links.manage_billing},
        }


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


Render = Callable[[AlertMessage, Links], Rendered]
"""Renders the message's words (``templates/email/usage_alert.*``)."""
LinksFor = Callable[[AlertMessage], Links]


def percent_words(percent: Decimal) -> str:
    """ "96.4 %" as people read it: whole percent below 100, never rounded up to 100."""
    return f"{int(percent)} %" if percent < 100 else f"{percent.normalize():f} %"
