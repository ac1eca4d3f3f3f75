"""Usage notifications as people receive them: one per threshold, by email and webhook.

A real SMTP server (aiosmtpd) and a real HTTP receiver take the messages;
``flask send-notifications`` sends them, as cron runs it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.extensions import db
from portal.models import Notification, User
from portal.notify import outbox
from portal.notify.cli import channels_for
from portal.notify.crossings import detect_crossings
from portal.notify.preferences import Preferences, set_pool_alerts, set_preferences
from portal.notify.run import NotifyOptions, send_notifications
from portal.usage.recording import record_usage
from tests.factories import NOW, FrozenClock, make_org, make_user
from tests.notify.conftest import (
    WEBHOOK_SECRET,
    Mailbox,
    Receiver,
    free_port,
    verify_signature,
)

_keys = itertools.count()


def record(session: Session, user: User, quantity: int, now: datetime | None = None) -> None:
    record_usage(
        session,
        user.id,
        idempotency_key=f"notify-{next(_keys)}",
        quantity=quantity,
        now=now or portal_clock.now(),
    )
    session.commit()


def run(app: Flask, *args: str) -> dict[str, Any]:
    """``flask send-notifications --json``: its summary."""
    result = app.test_cli_runner().invoke(args=["send-notifications", "--json", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1), result.output
    summary: dict[str, Any] = app.json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["exit_code"] == result.exit_code
    return summary


def email_only(app: Flask) -> None:
    """Notify by email alone: the webhook's settings gone."""
    app.config.pop("NOTIFY_WEBHOOK_URL")
    app.config.pop("NOTIFY_WEBHOOK_SECRET")


def statuses(session: Session) -> list[str]:
    session.expire_all()
    return sorted(session.scalars(select(Notification.status)))


def test_each_threshold_is_told_once_by_email_and_webhook(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver
) -> None:
    user = make_user(session, plan="pro", email="ada@example.com", name="Ada")  # 75 included
    session.commit()

    record(session, user, 59)
    assert run(notifying_app)["crossings"] == 0
    record(session, user, 1)  # 60 of 75: 80 %
    first = run(notifying_app)
    assert (first["crossings"], first["written"], first["sent"]) == (1, 2, 2)
    assert run(notifying_app)["sent"] == 0
    record(session, user, 12)  # 72: 96 %
    run(notifying_app)
    record(session, user, 3)  # 75: 100 %
    run(notifying_app)
    record(session, user, 10)  # overage goes on: nothing new to say
    assert run(notifying_app) | {"duration_s": 0} == run(notifying_app) | {"duration_s": 0}

    assert mailbox.subjects() == [
        "80 % of your AI suggestions used",
        "95 % of your AI suggestions used",
        "Overage started: €0.30 per AI suggestion from now on",
    ]
    assert [str(m["To"]) for m in mailbox.messages] == ["Ada <ada@example.com>"] * 3
    assert [body["threshold"] for body in receiver.bodies()] == [80, 95, 100]
    assert [body["text"] for body in receiver.bodies()] == mailbox.subjects()
    assert statuses(session) == ["sent"] * 6


def test_a_burst_across_two_thresholds_gives_one_message_naming_the_higher(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 50)
    record(session, user, 22)  # 72 of 75 before any run: past 80 % and 95 %

    assert run(notifying_app)["crossings"] == 1
    record(session, user, 1)
    run(notifying_app)

    assert mailbox.subjects() == ["95 % of your AI suggestions used"]
    assert [body["threshold"] for body in receiver.bodies()] == [95]


def test_a_new_period_starts_fresh(
    notifying_app: Flask, session: Session, mailbox: Mailbox, clock: FrozenClock
) -> None:
    user = make_user(session, plan="pro")  # periods start on the 15th
    session.commit()
    record(session, user, 60)
    run(notifying_app)
    clock.advance(timedelta(days=31))  # April 18: the next period
    record(session, user, 60)
    run(notifying_app)

    assert mailbox.subjects() == ["80 % of your AI suggestions used"] * 2
    periods = [
        re.search(r"Billing period\s*</td><td[^>]*>([^<]+)<", _html(m)) for m in mailbox.messages
    ]
    assert [p.group(1) if p else None for p in periods] == [
        "Mar 15 – Apr 14, 2026",
        "Apr 15 – May 14, 2026",
    ]


def test_free_at_its_cap_is_paused_until_the_reset_and_paid_is_in_overage(
    notifying_app: Flask, session: Session, mailbox: Mailbox
) -> None:
    free = make_user(session, plan="free", email="free@example.com")  # 5 a calendar month, capped
    paid = make_user(session, plan="starter", email="starter@example.com")  # 25, €0.35 over
    session.commit()
    record(session, free, 5)
    record(session, paid, 25)
    run(notifying_app)

    subjects = {to(m): str(m["Subject"]) for m in mailbox.messages}
    assert subjects["free@example.com"] == (
        "Limit reached: AI suggestions are paused until Apr 1, 2026, 00:00 UTC"
    )
    assert subjects["starter@example.com"] == (
        "Overage started: €0.35 per AI suggestion from now on"
    )
    free_text = _text(next(m for m in mailbox.messages if to(m) == "free@example.com"))
    assert "New suggestions are paused until the period resets on Apr 1, 2026" in free_text


def test_the_email_has_both_parts_the_figures_links_and_one_click_unsubscribe(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver
) -> None:
    user = make_user(session, plan="pro", email="ada@example.com", name="Ada")
    session.commit()
    record(session, user, 61)
    run(notifying_app)

    (message,) = mailbox.messages
    text, html = _text(message), _html(message)
    assert "Used:      61 of 75 (81.3 %)" in text
    assert "<strong>61</strong> of 75 (81.3 %)" in html
    # The period by its last day, and the reset at the instant after it, in both parts.
    period = re.search(
        r"Period: +.+ – (\w+ \d+, \d+) \(resets (\w+ \d+, \d+), \d\d:\d\d UTC\)", text
    )
    assert period, text
    last, resets = (datetime.strptime(found, "%b %d, %Y") for found in period.groups())
    assert resets - last == timedelta(days=1)
    assert f"{period.group(2)}, " in html.split("Resets", 1)[1]
    for part in (text, html):
        assert "61 of the 75 AI suggestions included in your Pro plan are used" in part
        assert "https://usage.example.com/usage" in part
        assert "€0.30" in part
    assert "Manage billing" in html
    unsubscribe = str(message["List-Unsubscribe"])
    assert re.fullmatch(
        r"<https://usage\.example\.com/notifications/unsubscribe/[\w.-]+>", unsubscribe
    )
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    # Each message carries its outbox row's id: the email's in its Message-ID.
    email_id = session.scalar(select(Notification.id).where(Notification.channel == "email"))
    assert str(message["Message-ID"]) == f"<{email_id}@portal.example>"
    webhook_id = session.scalar(select(Notification.id).where(Notification.channel == "webhook"))
    assert list(receiver.events()) == [str(webhook_id)]


def test_one_click_unsubscribe_works_signed_out_and_stops_only_email(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    run(notifying_app)
    link = str(mailbox.messages[0]["List-Unsubscribe"]).strip("<>")
    path = link.removeprefix("https://usage.example.com")

    # What a mailbox provider sends (RFC 8058): no cookie, no CSRF token.
    answer = notifying_app.test_client().post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    record(session, user, 12)
    run(notifying_app)

    assert len(mailbox.messages) == 1
    assert [body["threshold"] for body in receiver.bodies()] == [80, 95]


def test_a_channel_turned_off_stops_it_even_for_a_message_already_written(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver
) -> None:
    quiet = make_user(session, plan="pro")
    later = make_user(session, plan="pro")
    session.commit()
    set_preferences(session, quiet.id, Preferences(email=False, webhook=True), NOW)
    session.commit()
    record(session, quiet, 60)
    record(session, later, 60)

    channels = channels_for(notifying_app)
    detect_crossings(session, portal_clock.now(), channels.settings.channels)
    set_preferences(session, later.id, Preferences(email=True, webhook=False), NOW)
    session.commit()
    summary = run(notifying_app)

    assert summary["cancelled"] == 1
    assert [to(m) for m in mailbox.messages] == [later.email]
    assert [body["recipient"]["email"] for body in receiver.bodies()] == [quiet.email]


def test_a_pool_is_told_to_its_admins_and_the_members_who_asked(
    notifying_app: Flask, session: Session, mailbox: Mailbox
) -> None:
    org = make_org(session, plan="team", seats=2)  # 100 pooled
    admin = make_user(session, org=org, role="admin", email="admin@example.com")
    asked = make_user(session, org=org, email="asked@example.com")
    quiet = make_user(session, org=org, email="quiet@example.com")
    gone = make_user(session, org=org, role="admin", email="gone@example.com")
    session.commit()
    set_preferences(session, asked.id, Preferences(pool_alerts=True), NOW)
    gone.disabled_at = NOW
    session.commit()
    record(session, quiet, 80)
    run(notifying_app)

    assert sorted(to(m) for m in mailbox.messages) == [admin.email, asked.email]
    assert {str(m["Subject"]) for m in mailbox.messages} == {
        f"{org.name}: 80 % of {org.name}'s pooled AI suggestions used"
    }
    manage = {to(m): "Manage billing" in _html(m) for m in mailbox.messages}
    assert manage == {admin.email: True, asked.email: False}

    set_pool_alerts(session, org, False)
    session.commit()
    record(session, quiet, 16)
    run(notifying_app)
    assert len(mailbox.messages) == 2


def test_our_webhook_signature_is_checked_by_the_documented_recipe(
    notifying_app: Flask, session: Session, receiver: Receiver
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    run(notifying_app)

    (headers, body), now = receiver.requests[0], int(portal_clock.now().timestamp())
    signature = headers["Portal-Signature"]
    assert verify_signature(WEBHOOK_SECRET, body, signature, now)
    assert not verify_signature(
        WEBHOOK_SECRET, body.replace(b'"threshold":80', b'"threshold":8'), signature, now
    )
    assert not verify_signature("another secret", body, signature, now)
    assert not verify_signature(WEBHOOK_SECRET, body, signature, now + 301)  # a replay, later
    for garbled in ("", "t", "v1=,t=", f"t=-{now},{signature}", "t=1e3,v1=00", "t=٣,v1=00"):
        assert not verify_signature(WEBHOOK_SECRET, body, garbled, now)  # refused, never raised
    assert headers["Content-Type"] == "application/json"


def test_an_smtp_server_that_refuses_then_recovers_gets_exactly_one_message(
    notifying_app: Flask, session: Session, mailbox: Mailbox, clock: FrozenClock
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    mailbox.refuse = ["451 4.3.0 Try again later", "421 4.7.0 Too busy"]

    assert run(notifying_app)["retrying"] == 1  # email refused; the webhook went
    assert run(notifying_app)["sent"] == 0  # not due yet: it waits a minute
    clock.advance(timedelta(minutes=1))
    assert run(notifying_app)["retrying"] == 1  # refused again; now it waits 5 minutes
    clock.advance(timedelta(minutes=5))
    assert run(notifying_app)["sent"] == 1
    clock.advance(timedelta(hours=1))
    run(notifying_app)

    assert mailbox.subjects() == ["80 % of your AI suggestions used"]
    assert statuses(session) == ["sent", "sent"]


def test_an_unreachable_smtp_server_is_retried_and_a_5xx_fails_for_the_operator(
    notifying_app: Flask, session: Session, mailbox: Mailbox, clock: FrozenClock
) -> None:
    user = make_user(session, plan="pro", email="ada@example.com")
    session.commit()
    record(session, user, 60)
    notifying_app.config["SMTP_URL"] = f"smtp://127.0.0.1:{_closed_port()}"
    summary = run(notifying_app)
    assert summary["retrying"] == 1 and "unreachable" in summary["errors"][0]

    notifying_app.config["SMTP_URL"] = f"smtp://127.0.0.1:{mailbox.port}"
    mailbox.refuse = ["550 5.1.1 No such mailbox"]
    clock.advance(timedelta(minutes=1))
    assert run(notifying_app)["failed"] == 1

    status = notifying_app.test_cli_runner().invoke(args=["usage-status"])
    assert "Notifications failed: 1" in status.output
    assert "email to ada@example.com, 2 attempts" in status.output
    assert "SMTP 550: 5.1.1 No such mailbox" in status.output

    summary = run(notifying_app, "--retry-failed")
    assert summary["sent"] == 1 and mailbox.subjects() == ["80 % of your AI suggestions used"]


class Killed(BaseException):
    """The run's process dies here (SIGKILL, the machine going down)."""


def killed(*args: object, **kwargs: object) -> None:
    raise Killed


def test_a_run_killed_after_the_server_took_an_email_does_not_send_it_again(
    notifying_app: Flask,
    session: Session,
    mailbox: Mailbox,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    email_only(notifying_app)
    with monkeypatch.context() as patch:
        patch.setattr(outbox, "mark_sent", killed)  # after the server's 250, before the record
        with pytest.raises(Killed):
            run(notifying_app)
    session.rollback()  # what the dead process's connection did, as the server sees it
    assert len(mailbox.messages) == 1
    assert statuses(session) == ["handed_over"]

    clock.advance(outbox.LEASE)
    summary = run(notifying_app)
    assert (summary["sent"], summary["unconfirmed"]) == (0, 1)
    clock.advance(timedelta(hours=1))
    run(notifying_app)
    assert len(mailbox.messages) == 1
    assert statuses(session) == ["sent"]


def test_a_run_killed_before_the_final_dot_sends_the_email_once_later(
    notifying_app: Flask,
    session: Session,
    mailbox: Mailbox,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    email_only(notifying_app)
    with monkeypatch.context() as patch:
        patch.setattr(outbox, "mark_handed_over", killed)  # the whole message but the dot
        with pytest.raises(Killed):
            run(notifying_app)
    session.rollback()  # what the dead process's connection did, as the server sees it
    assert statuses(session) == ["sending"]

    assert run(notifying_app)["sent"] == 0  # still leased by the dead run
    clock.advance(outbox.LEASE)
    assert run(notifying_app)["sent"] == 1
    assert len(mailbox.messages) == 1


def test_a_webhook_repeated_after_a_killed_run_carries_the_same_event_id(
    notifying_app: Flask,
    session: Session,
    receiver: Receiver,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    notifying_app.config.pop("SMTP_URL")
    notifying_app.config.pop("MAIL_FROM")
    with monkeypatch.context() as patch:
        patch.setattr(outbox, "mark_sent", killed)  # after the receiver's 200
        with pytest.raises(Killed):
            run(notifying_app)
    session.rollback()  # what the dead process's connection did, as the server sees it
    clock.advance(outbox.LEASE)
    run(notifying_app)

    first, second = receiver.bodies()
    assert first == second  # the same event, which the receiver keeps once
    assert len(receiver.events()) == 1
    assert statuses(session) == ["sent"]


def test_a_webhook_4xx_fails_and_a_5xx_is_retried(
    notifying_app: Flask, session: Session, receiver: Receiver, clock: FrozenClock
) -> None:
    first = make_user(session, plan="pro")
    session.commit()
    record(session, first, 60)
    receiver.answers = [503]
    assert run(notifying_app)["retrying"] == 1
    clock.advance(timedelta(minutes=1))
    assert run(notifying_app)["sent"] == 1

    second = make_user(session, plan="pro")
    session.commit()
    record(session, second, 60)
    receiver.answers = [410]
    summary = run(notifying_app)
    assert summary["failed"] == 1 and "HTTP 410" in summary["errors"][0]


def test_a_message_whose_period_ended_before_it_went_out_is_not_sent(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver, clock: FrozenClock
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    mailbox.refuse = ["451 4.3.0 Try again later"]
    receiver.answers = [503]
    run(notifying_app)
    clock.advance(timedelta(days=28))  # past April 15: the period is over

    summary = run(notifying_app)
    assert (summary["sent"], summary["cancelled"]) == (0, 2)
    assert mailbox.messages == []


def test_concurrent_runs_and_recording_tell_each_threshold_once(
    notifying_app: Flask, session: Session, mailbox: Mailbox, receiver: Receiver
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    user_id = user.id
    recorded = threading.Barrier(4)

    def recording() -> None:
        with notifying_app.app_context():
            local = db.session()
            recorded.wait()
            for _ in range(40):
                record(local, local.get(User, user_id), 1)

    def running() -> None:
        with notifying_app.app_context():
            channels = channels_for(notifying_app)
            recorded.wait()
            for _ in range(15):
                send_notifications(db.session(), channels, portal_clock.now)

    threads = [threading.Thread(target=recording) for _ in range(2)]
    threads += [threading.Thread(target=running) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run(notifying_app)

    thresholds = [body["threshold"] for body in receiver.bodies()]
    # 80 of 75: each threshold at most once, in order, the last one 100 %.
    assert thresholds == sorted(set(thresholds)) and thresholds[-1] == 100
    assert len({str(m["Message-ID"]) for m in mailbox.messages}) == len(mailbox.messages)


def test_a_run_out_of_time_counts_what_it_left_and_the_next_run_sends_it(
    notifying_app: Flask, session: Session, mailbox: Mailbox
) -> None:
    email_only(notifying_app)
    for _ in range(3):
        record(session, make_user(session, plan="pro"), 60)
    # Each look at the time is a second later: the run sends one message, gives the
    # second of its batch back and never leases the third.
    ticks = itertools.count()

    with notifying_app.app_context():
        summary = send_notifications(
            db.session(),
            channels_for(notifying_app),
            portal_clock.now,
            NotifyOptions(max_seconds=3, batch_size=2),
            monotonic=lambda: float(next(ticks)),
        )
    assert (summary.sent, summary.deferred, summary.exit_code) == (1, 2, 1)
    assert (run(notifying_app)["sent"], len(mailbox.messages)) == (2, 3)


def test_without_a_channel_the_command_stops_with_a_configuration_error(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["send-notifications"])
    assert result.exit_code == 2
    assert "no channel is set up: set SMTP_URL and MAIL_FROM" in result.output

    app.config.update(SMTP_URL="smtp://", MAIL_FROM="usage@portal.example")
    result = app.test_cli_runner().invoke(args=["send-notifications"])
    assert result.exit_code == 2 and "SMTP_URL must look like" in result.output


def _closed_port() -> int:
    return free_port()


def to(message: Any) -> str:
    """The address a message went to."""
    return str(message["To"].addresses[0].addr_spec)


def _text(message: Any) -> str:
    return str(message.get_body(("plain",)).get_content())


def _html(message: Any) -> str:
    return str(message.get_body(("html",)).get_content())


def test_an_address_the_mail_cannot_carry_fails_for_the_operator_and_the_others_still_go(
    notifying_app: Flask, session: Session, mailbox: Mailbox
) -> None:
    email_only(notifying_app)
    for address in ["zoë@example.com", "a..b@example.com", "ada@exämple.com", "grace@example.com"]:
        record(session, make_user(session, plan="pro", email=address), 60)

    summary = run(notifying_app)

    assert (summary["sent"], summary["failed"]) == (2, 2)
    # aiosmtpd offers SMTPUTF8, so an international domain goes; a malformed local part cannot.
    assert sorted(mailbox.recipients) == ["ada@exämple.com", "grace@example.com"]
    assert sorted(error.split(":")[0] for error in summary["errors"]) == [
        "email to a..b@example.com",
        "email to zoë@example.com",
    ]
    assert statuses(session) == ["failed", "failed", "sent", "sent"]
    assert run(notifying_app)["failed"] == 0  # failed stays failed: nothing is stuck or repeated

    with smtp_server("127.0.0.1", enable_SMTPUTF8=False) as plain:
        notifying_app.config["SMTP_URL"] = f"smtp://127.0.0.1:{plain.port}"
        record(session, make_user(session, plan="pro", email="bob@exämple.com"), 60)
        summary = run(notifying_app)
    assert summary["failed"] == 1 and plain.messages == []
    refusal = "the mail server takes no address outside ASCII (bob@exämple.com)"
    assert refusal in summary["errors"][0]


def test_a_sender_named_outside_ascii_goes_to_any_server_with_the_name_encoded(
    notifying_app: Flask, session: Session
) -> None:
    email_only(notifying_app)
    notifying_app.config["MAIL_FROM"] = "Société Portail <usage@portal.example>"
    record(session, make_user(session, plan="pro", email="grace@example.com"), 60)
    with smtp_server("127.0.0.1", enable_SMTPUTF8=False) as plain:
        notifying_app.config["SMTP_URL"] = f"smtp://127.0.0.1:{plain.port}"
        assert run(notifying_app)["sent"] == 1

    (wire,) = plain.contents
    assert wire.isascii()  # nothing a server without SMTPUTF8 could refuse
    assert str(plain.messages[0]["From"]) == "Société Portail <usage@portal.example>"


def test_a_run_that_lost_its_lease_mid_email_leaves_it_to_the_run_that_took_over(
    notifying_app: Flask,
    session: Session,
    mailbox: Mailbox,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record(session, user, 60)
    email_only(notifying_app)
    handed_over = outbox.mark_handed_over
    overtaken: list[dict[str, Any]] = []
    stalled = threading.Event()

    def slow_then_overtaken(*args: Any, **kwargs: Any) -> bool:
        if not stalled.is_set():  # the first run stalls here, past its lease; a second starts
            stalled.set()
            clock.advance(outbox.LEASE + timedelta(seconds=1))
            overtaken.append(run(notifying_app))
        return handed_over(*args, **kwargs)

    monkeypatch.setattr(outbox, "mark_handed_over", slow_then_overtaken)
    first = run(notifying_app)

    assert overtaken[0]["sent"] == 1
    assert first["sent"] == 0 and first["failed"] == 0
    assert len(mailbox.messages) == 1  # the first run closed its connection before the dot
    assert statuses(session) == ["sent"]


def test_an_upgrade_mid_period_announces_the_new_plans_thresholds(
    notifying_app: Flask, session: Session, mailbox: Mailbox
) -> None:
    user = make_user(session, plan="starter")  # 25 included, €0.35 over
    session.commit()
    record(session, user, 25)
    run(notifying_app)
    assert user.subscription is not None
    user.subscription.plan_id = "pro"  # 75 included, €0.30 over
    session.commit()
    record(session, user, 35)  # 60 of 75: 80 % of the new allowance
    run(notifying_app)
    record(session, user, 15)  # 75 of 75
    run(notifying_app)

    assert mailbox.subjects() == [
        "Overage started: €0.35 per AI suggestion from now on",
        "80 % of your AI suggestions used",
        "Overage started: €0.30 per AI suggestion from now on",
    ]


def test_a_webhook_url_carrying_a_secret_never_shows_it_in_errors(
    notifying_app: Flask, session: Session
) -> None:
    notifying_app.config.pop("SMTP_URL")
    notifying_app.config.pop("MAIL_FROM")
    notifying_app.config["NOTIFY_WEBHOOK_URL"] = (
        f"http://127.0.0.1:{_closed_port()}/hooks/tok-s3cr3t?key=k3y"
    )
    record(session, make_user(session, plan="pro"), 60)

    summary = run(notifying_app)
    status = notifying_app.test_cli_runner().invoke(args=["usage-status"]).output

    assert summary["retrying"] == 1
    assert "webhook at 127.0.0.1 unreachable: ConnectionError" in summary["errors"][0]
    assert "s3cr3t" not in str(summary) + status and "k3y" not in str(summary) + status


def test_a_mail_server_elsewhere_without_starttls_gets_nothing(
    notifying_app: Flask, session: Session
) -> None:
    """Only a server on this machine may be spoken to unencrypted: 127.0.0.2 stands for one
    across a network (it is not one of the loopback names the portal trusts)."""
    email_only(notifying_app)
    with smtp_server("127.0.0.2") as elsewhere:
        notifying_app.config["SMTP_URL"] = f"smtp://127.0.0.2:{elsewhere.port}"
        record(session, make_user(session, plan="pro"), 60)
        summary = run(notifying_app)

    assert summary["retrying"] == 1 and elsewhere.messages == []
    assert "offers no STARTTLS" in summary["errors"][0]


@contextlib.contextmanager
def smtp_server(hostname: str, **options: Any) -> Iterator[Mailbox]:
    """Another SMTP server than the ``mailbox`` fixture's, with aiosmtpd's ``options``."""
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname=hostname, port=box.port, **options)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
