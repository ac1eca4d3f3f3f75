"""``flask sync-subscriptions`` and ``flask stripe-status``: following Stripe's subscriptions.

Exit codes of ``sync-subscriptions``, as ``report-usage``'s: 0 when every
subscription that should govern a user or an organization does, and no
event is left pending; 1 when one is unmatched or failed, a customer pays for
two live subscriptions, an event stays pending, or Stripe could not be
reached; 2 for a configuration error (then nothing is touched).
"""

from __future__ import annotations

import click
from flask import Flask, current_app

from portal import clock, encoding
from portal.billing.settings import load_stripe_settings, load_webhook_secret, stripe_environ
from portal.billing.sync import sync_subscriptions
from portal.billing.webhooks import EventSummary, event_summary
from portal.config import ConfigError
from portal.extensions import db


@click.command("sync-subscriptions")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--pending-only",
    is_flag=True,
    help="Only handle the webhook events still pending; list no subscriptions.",
)
@click.pass_context
def sync_subscriptions_command(ctx: click.Context, as_json: bool, pending_only: bool) -> None:
    """Repair whatever a lost webhook left stale: apply every subscription Stripe has."""
    try:
        settings = load_stripe_settings(stripe_environ(current_app.config))
    except ConfigError as error:
        click.echo(f"configuration error: {error}", err=True)
        ctx.exit(2)
    # Imported here: only the commands that talk to Stripe load its library.
    from portal.billing.stripe_client import StripeBilling, StripeUnavailable

    try:
        summary = sync_subscriptions(
            db.session(),
            StripeBilling.from_settings(settings, timeout=20),
            clock.now(),
            pending_only=pending_only,
        )
    except StripeUnavailable as error:
        db.session.rollback()
        click.echo(f"sync-subscriptions: Stripe could not be reached ({error}); nothing changed")
        ctx.exit(1)
    db.session.commit()
    if as_json:
        click.echo(encoding.dumps(summary.as_dict(), sort_keys=True))
    else:
        counts = ", ".join(
            f"{outcome} {count}" for outcome, count in sorted(summary.outcomes.items())
        )
        events = ", ".join(
            f"{outcome} {count}" for outcome, count in sorted(summary.pending_events.items())
        )
        click.echo(
            f"sync-subscriptions: {sum(summary.outcomes.values())} subscriptions "
            f"({counts or 'none'}); {sum(summary.pending_events.values())} pending events "
            f"handled ({events or 'none'})"
        )
        for line in summary.changes:
            click.echo(f"  changed {line}")
        for line in summary.problems:
            click.echo(f"  needs attention: {line}")
    ctx.exit(summary.exit_code)


@click.command("stripe-status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def stripe_status_command(as_json: bool) -> None:
    """Show how Stripe's webhook events fared: counts, the last one, unmatched and failed ones."""
    summary = event_summary(db.session(), clock.now())
    configured = load_webhook_secret(stripe_environ(current_app.config)) is not None
    db.session.rollback()
    if as_json:
        click.echo(encoding.dumps({"webhook_configured": configured, **summary.as_dict()}))
        return
    for line in _status_lines(summary, configured):
        click.echo(line)


def _status_lines(summary: EventSummary, configured: bool) -> list[str]:
    lines = [
        "Webhook: "
        + (
            "STRIPE_WEBHOOK_SECRET is set."
            if configured
            else "not set up: POST /stripe/webhook answers 404."
        )
    ]
    counts = ", ".join(f"{outcome} {count}" for outcome, count in summary.outcomes.items())
    lines.append(f"Events since {summary.since:%Y-%m-%d}: {counts}.")
    if summary.last is not None:
        last = summary.last
        lines.append(
            f"Last event: {last.id} {last.type} at {last.received_at:%Y-%m-%d %H:%M} UTC "
            f"({last.outcome})."
        )
    else:
        lines.append("Last event: none yet.")
    if summary.attention:
        lines.append("Needs attention:")
        for event in summary.attention:
            lines.append(
                f"  {event.id} {event.type} {event.outcome} at "
                f"{event.received_at:%Y-%m-%d %H:%M} UTC, customer "
                f"{event.stripe_customer_id or '-'}: {event.message or ''}".rstrip()
            )
    return lines


def init_app(app: Flask) -> None:
    for command in (sync_subscriptions_command, stripe_status_command):
        app.cli.add_command(command)
