"""One ``flask send-notifications``: find new crossings, then deliver what is due.

Run from cron every minute or two. Each step commits before the next, so a
run that dies leaves nothing half-done: crossings found are written with
their messages in one transaction, and each message is leased before it is
sent (``outbox``). Runs may overlap; each message still goes out once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import requests
from sqlalchemy.orm import Session

from portal.notify import mail, outbox, webhook
from portal.notify.crossings import detect_crossings
from portal.notify.delivery import Delivered, Outcome
from portal.notify.messages import AlertMessage, LinksFor, Render
from portal.notify.settings import NotifySettings

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 50.0
"""Under a minute, so runs started each minute by cron rarely overlap."""
DEFAULT_BATCH_SIZE = 100


@dataclass(frozen=True)
class NotifyOptions:
    max_seconds: float = DEFAULT_MAX_SECONDS
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class Channels:
    """Everything a delivery needs besides the database: settings, words, addresses."""

    settings: NotifySettings
    render: Render
    links_for: LinksFor
    http: requests.Session = field(default_factory=requests.Session)


@dataclass
class NotifySummary:
    crossings: int = 0
    """Thresholds newly crossed."""
    written: int = 0
    """Messages written about them (recipients × channels)."""
    sent: int = 0
    retrying: int = 0
    """Not delivered this time; tried again later."""
    failed: int = 0
    cancelled: int = 0
    """No longer wanted: the channel turned off, the period over."""
    unconfirmed: int = 0
    """Emails a dead run had handed over, counted as sent."""
    deferred: int = 0
    """Due, but left for the next run: the time budget ran out."""
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    """Why messages failed or wait for a retry (the first few)."""

    @property
    def exit_code(self) -> int:
        """0 when every message due was settled; 1 when one failed, waits for a retry, or was
        left for the next run."""
        return 1 if self.failed or self.retrying or self.deferred else 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}

    def note(self, error: str | None) -> None:
        if error and len(self.errors) < 10:
            self.errors.append(error)


def send_notifications(
    session: Session,
    channels: Channels,
    now: Callable[[], datetime],
    options: NotifyOptions = NotifyOptions(),
    monotonic: Callable[[], float] = time.monotonic,
) -> NotifySummary:
    started = monotonic()
    summary = NotifySummary()
    detected = detect_crossings(session, now(), channels.settings.channels)
    summary.crossings, summary.written = detected.alerts, detected.notifications
    summary.unconfirmed = outbox.settle_handed_over(session, now())
    while monotonic() - started < options.max_seconds:
        leased = outbox.lease_due(session, now(), options.batch_size)
        if not leased:
            break
        messages, unwanted = outbox.leased_messages(session, leased, now())
        outbox.mark_cancelled(session, unwanted, now())
        summary.cancelled += len(unwanted)
        for number, message in enumerate(messages):
            if monotonic() - started >= options.max_seconds:
                outbox.release(session, [later.lease for later in messages[number:]])
                break
            if not outbox.renew_lease(session, message.lease, now()):
                continue  # this run was too slow: another one holds the message now
            _settle(session, message, _deliver(session, channels, message, now), now, summary)
    if monotonic() - started >= options.max_seconds:
        # Out of time: what is due now, given back or never leased, waits for the next run.
        summary.deferred = outbox.count_due(session, now())
    summary.duration_s = round(monotonic() - started, 3)
    return summary


def _deliver(
    session: Session, channels: Channels, message: AlertMessage, now: Callable[[], datetime]
) -> Delivered:
    """Deliver one message; whatever goes wrong with it is its own failure, not the run's."""
    try:
        return _deliver_on_channel(session, channels, message, now)
    except Exception as error:  # noqa: BLE001 - recorded as this message's failure, and logged
        log.exception("notification %s could not be sent", message.event_id)
        return Delivered(Outcome.FAILED, f"could not be sent: {type(error).__name__}: {error}")


def _deliver_on_channel(
    session: Session, channels: Channels, message: AlertMessage, now: Callable[[], datetime]
) -> Delivered:
    settings = channels.settings
    links = channels.links_for(message)
    rendered = channels.render(message, links)
    if message.channel == "email":
        if settings.mail is None:
            return Delivered(Outcome.RETRY, "email is not set up (SMTP_URL, MAIL_FROM)")
        email = mail.compose(message, rendered, links, settings.mail)
        return mail.send(
            settings.mail, email, lambda: outbox.mark_handed_over(session, message.lease)
        )
    if settings.webhook is None:
        return Delivered(Outcome.RETRY, "the webhook is not set up (NOTIFY_WEBHOOK_URL)")
    payload = message.payload(rendered.subject, links)
    return webhook.send(settings.webhook, payload, now(), channels.http)


def _settle(
    session: Session,
    message: AlertMessage,
    delivered: Delivered,
    now: Callable[[], datetime],
    summary: NotifySummary,
) -> None:
    if delivered.outcome is Outcome.TAKEN_OVER:
        return
    if delivered.outcome is Outcome.SENT:
        outbox.mark_sent(session, message.lease, now(), note=delivered.detail)
        summary.sent += 1
        return
    error = f"{message.channel} to {message.recipient_email}: {delivered.detail}"
    summary.note(error)
    if delivered.outcome is Outcome.RETRY and outbox.retry_later(
        session, message.lease, now(), delivered.detail or "retry"
    ):
        summary.retrying += 1
        return
    if delivered.outcome is Outcome.FAILED:
        outbox.mark_failed(session, message.lease, now(), delivered.detail or "failed")
    summary.failed += 1
