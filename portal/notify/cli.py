"""``flask send-notifications``: a thin wrapper over ``run.send_notifications``.

Exit codes, as ``report-usage``: 0 when every message due was sent (or is no
longer wanted), 1 when one failed or waits for a retry, 2 for a
configuration error (then nothing is touched).
"""

from __future__ import annotations

from collections.abc import Callable

import click
from flask import Flask, current_app, url_for

from portal import clock, encoding
from portal.config import ConfigError
from portal.extensions import db
from portal.notify import outbox
from portal.notify.messages import AlertMessage, Links, Rendered
from portal.notify.preferences import unsubscribe_token
from portal.notify.run import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_SECONDS,
    Channels,
    NotifyOptions,
    NotifySummary,
    send_notifications,
)
from portal.notify.settings import NotifySettings, load_notify_settings, notify_environ

MESSAGE_TEMPLATES = (
    "email/usage_alert_subject.txt",
    "email/usage_alert.txt",
    "email/usage_alert.html",
)


@click.command("send-notifications")
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=1),
    default=DEFAULT_MAX_SECONDS,
    show_default=True,
    help="Time budget: stop taking new messages after this long.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Messages taken at a time.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Put failed messages of periods still running back in the outbox, then send.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def send_notifications_command(
    ctx: click.Context, max_seconds: float, batch_size: int, retry_failed: bool, as_json: bool
) -> None:
    """Tell people their usage crossed 80, 95 or 100 %: email and webhook, once each (cron)."""
    try:
        channels = channels_for(current_app)
    except ConfigError as error:
        click.echo(f"configuration error: {error}", err=True)
        ctx.exit(2)
        return
    session = db.session()
    if retry_failed:
        requeued = outbox.requeue_failed(session, clock.now())
        click.echo(f"Put {requeued} failed messages back in the outbox.", err=as_json)
    summary = send_notifications(
        session, channels, clock.now, NotifyOptions(max_seconds=max_seconds, batch_size=batch_size)
    )
    if as_json:
        click.echo(encoding.dumps(summary.as_dict(), sort_keys=True))
    else:
        click.echo(summary_line(summary))
        for problem in summary.errors:
            click.echo(f"  {problem}", err=True)
    ctx.exit(summary.exit_code)


def channels_for(app: Flask) -> Channels:
    """The channels ``app``'s settings set up; ``ConfigError`` names what is missing."""
    return Channels(settings=_settings(app), render=_renderer(app), links_for=_links(app))


def _settings(app: Flask) -> NotifySettings:
    settings = load_notify_settings(notify_environ(app.config))
    if not settings.channels:
        raise ConfigError(
            "no channel is set up: set SMTP_URL and MAIL_FROM for email, "
            "or NOTIFY_WEBHOOK_URL and NOTIFY_WEBHOOK_SECRET for the webhook"
        )
    if not app.config.get("PORTAL_BASE_URL"):
        raise ConfigError("PORTAL_BASE_URL is required: messages link to the portal")
    if not app.config.get("SECRET_KEY"):
        raise ConfigError("SECRET_KEY is required: it signs the unsubscribe links")
    return settings


def _renderer(app: Flask) -> Callable[[AlertMessage, Links], Rendered]:
    subject, text, html = (app.jinja_env.get_template(name) for name in MESSAGE_TEMPLATES)

    def render(message: AlertMessage, links: Links) -> Rendered:
        context = {"message": message, "links": links}
        headline = subject.render(context).strip()
        return Rendered(
            subject=headline,
            text=text.render(context, subject=headline),
            html=html.render(context, subject=headline),
        )

    return render


def _links(app: Flask) -> Callable[[AlertMessage], Links]:
    """Absolute links, built by the app's own routes at ``PORTAL_BASE_URL``."""
    base_url = app.config["PORTAL_BASE_URL"]
    secret_key = app.config["SECRET_KEY"]

    def links_for(message: AlertMessage) -> Links:
        with app.test_request_context("/", base_url=base_url):
            if message.for_pool:
                usage = url_for("orgs.usage", slug=message.organization_slug, _external=True)
            else:
                usage = url_for("usage.dashboard", _external=True)
            token = unsubscribe_token(secret_key, message.recipient_id)
            return Links(
                usage=usage,
                manage_billing=(
                    usage if message.plan.is_paid and message.recipient_manages_billing else None
                ),
                settings=url_for("notifications.settings", _external=True),
                unsubscribe=url_for("notifications.unsubscribe", token=token, _external=True),
            )

    return links_for


def summary_line(summary: NotifySummary) -> str:
    line = (
        f"{summary.crossings} thresholds crossed, {summary.written} messages written; "
        f"{summary.sent} sent, {summary.retrying} to retry, {summary.failed} failed, "
        f"{summary.cancelled} no longer wanted in {summary.duration_s:.1f} s."
    )
    if summary.unconfirmed:
        line += f" {summary.unconfirmed} emails an interrupted run handed over counted as sent."
    return line


def init_app(app: Flask) -> None:
    app.cli.add_command(send_notifications_command)
