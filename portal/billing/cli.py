"""``flask report-usage`` and ``flask usage-status``: thin wrappers over the reporter.

Exit codes of ``report-usage``: 0 when everything the run took was sent or
skipped, 1 when a batch failed or is left pending, 2 for a configuration
error (then nothing is touched).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

import click
from flask import Flask, current_app
from sqlalchemy.orm import Session

from portal import clock, encoding
from portal.billing.preview import ReportPreview, preview_report
from portal.billing.recovery import BatchNotFailed, mark_batch_sent
from portal.billing.recovery import requeue_unbilled as requeue_unbilled_usage
from portal.billing.reporter import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLI_SENDERS,
    DEFAULT_MAX_SECONDS,
    MAX_BATCH_SIZE,
    MAX_SENDERS,
    ReportOptions,
    ReportSummary,
    report_usage,
)
from portal.billing.settings import (
    StripeSettings,
    load_meter_event_name,
    load_stripe_settings,
    stripe_environ,
)
from portal.billing.status import ReportingStatus, RunInfo, reporting_status
from portal.config import ConfigError
from portal.extensions import db
from portal.notify.status import notification_status
from portal.notify.status import status_lines as notification_lines
from portal.usage.organizations import organizations_over_seats

PREVIEW_LINES_SHOWN = 50

Setting = TypeVar("Setting")


def _session() -> Session:
    return db.session()


def _configured_or_exit(
    ctx: click.Context, load: Callable[[Mapping[str, str]], Setting]
) -> Setting:
    """What ``load`` reads from the ``STRIPE_*`` settings; a bad one exits 2, naming it."""
    try:
        return load(stripe_environ(current_app.config))
    except ConfigError as error:
        click.echo(f"configuration error: {error}", err=True)
        ctx.exit(2)
        raise AssertionError("unreachable") from error


@click.command("report-usage")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; change nothing.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Most usage events to take."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Usage events per claim; memory grows with it.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=1),
    default=DEFAULT_MAX_SECONDS,
    show_default=True,
    help="Time budget: stop taking new work after this long.",
)
@click.option(
    "--senders",
    type=click.IntRange(1, MAX_SENDERS),
    default=DEFAULT_CLI_SENDERS,
    show_default=True,
    help="Meter events sent at once, on a database connection each. "
    "Never two at once for one customer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--retry-failed", is_flag=True, help="Put failed batches back and send them again.")
@click.option(
    "--mark-sent",
    "mark_sent",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="BATCH_ID",
    help="Settle a failed batch that reached Stripe another way (checked by hand); repeatable. "
    "Sends nothing.",
)
@click.option(
    "--requeue-unbilled",
    is_flag=True,
    help="Put paid usage skipped for lack of a Stripe customer (of the last 34 days) back in "
    "the backlog, once the customer is set. Sends nothing; the next run does.",
)
@click.pass_context
def report_usage_command(
    ctx: click.Context,
    dry_run: bool,
    limit: int | None,
    batch_size: int,
    max_seconds: float,
    senders: int,
    as_json: bool,
    retry_failed: bool,
    mark_sent: tuple[int, ...],
    requeue_unbilled: bool,
) -> None:
    """Send billable usage to Stripe Billing Meters, each unit exactly once (run from cron)."""
    if mark_sent:
        _mark_sent(ctx, mark_sent)
        return
    if requeue_unbilled:
        requeued = requeue_unbilled_usage(_session(), clock.now())
        db.session.commit()
        click.echo(f"Put {requeued} usage events back in the backlog; the next run reports them.")
        return
    settings: StripeSettings | None = None
    if dry_run:
        # It sends nothing, so it needs no Stripe key: only the meter's event name.
        event_name = _configured_or_exit(ctx, load_meter_event_name)
    else:
        settings = _configured_or_exit(ctx, load_stripe_settings)
        event_name = settings.meter_event_name
    options = ReportOptions(
        event_name=event_name,
        batch_size=batch_size,
        limit=limit,
        max_seconds=max_seconds,
        retry_failed=retry_failed,
        senders=senders,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    if settings is None:  # --dry-run
        preview = preview_report(_session(), clock.now(), options)
        db.session.rollback()
        _echo_preview(preview, as_json)
        return

    # Imported here: the web app loads this module too, and never needs ``stripe``.
    from portal.billing.stripe_client import StripeMeterEventGateway

    gateway = StripeMeterEventGateway.from_settings(settings)
    session = _session()
    interactive = sys.stdout.isatty() and not as_json
    if interactive:
        total = preview_total(session)
        with click.progressbar(
            length=max(total, 1), label="Reporting usage", file=sys.stderr
        ) as bar:
            summary = report_usage(session, gateway, clock.now(), options, on_progress=bar.update)
    else:
        summary = report_usage(session, gateway, clock.now(), options)
    if as_json:
        click.echo(encoding.dumps(summary.as_dict(), sort_keys=True))
    else:
        click.echo(summary_line(summary))
    if summary.error is not None:
        click.echo(f"configuration error: {summary.error}", err=True)
    ctx.exit(summary.exit_code)


def _mark_sent(ctx: click.Context, batch_ids: tuple[int, ...]) -> None:
    """``--mark-sent``: all the named batches, or none of them."""
    session = _session()
    settled = []
    for batch_id in batch_ids:
        try:
            settled.append(mark_batch_sent(session, batch_id, clock.now()))
        except BatchNotFailed as error:
            db.session.rollback()
            click.echo(f"error: {error}; nothing was changed", err=True)
            ctx.exit(1)
    db.session.commit()
    for batch in settled:
        click.echo(
            f"Marked batch #{batch.id} sent: {batch.stripe_customer_id}, value {batch.value}, "
            f"{batch.event_count} usage events now reported."
        )


def preview_total(session: Session) -> int:
    """Usage events the run may settle: the backlog plus the outbox, for the progress bar."""
    status = reporting_status(session, clock.now(), failed_shown=0)
    db.session.rollback()
    return status.pending_events + status.pending_batch_events


def summary_line(summary: ReportSummary) -> str:
    """One line for the cron log."""
    reasons = ", ".join(
        f"{name} {count}" for name, count in sorted(summary.skipped_reasons.items())
    )
    parts = [
        f"claimed {summary.claimed} events",
        f"sent {summary.batches_sent} meter events "
        f"({summary.events_reported} events, value {summary.value_sent})",
        f"skipped {summary.skipped}" + (f" ({reasons})" if reasons else ""),
        f"failed {summary.failed}",
        f"retried {summary.retried}",
        f"pending {summary.pending}",
    ]
    if summary.requeued:
        parts.append(f"requeued {summary.requeued}")
    line = f"report-usage: {'; '.join(parts)}; {summary.duration_s:.1f}s"
    if summary.exit_code == 1:
        line += " (see flask usage-status)"
    return line


def _echo_preview(preview: ReportPreview, as_json: bool) -> None:
    if as_json:
        click.echo(encoding.dumps(preview.as_dict(), sort_keys=True))
        return
    click.echo(
        f"Dry run: nothing is sent or changed. {preview.events_to_send} usage events would go "
        f"into {len(preview.meter_events)} meter events (value {preview.value_to_send}); "
        f"{preview.pending_batches} batches are already waiting in the outbox."
    )
    for line in preview.meter_events[:PREVIEW_LINES_SHOWN]:
        note = "  [outbox]" if line.from_outbox else ""
        click.echo(
            f"  {line.stripe_customer_id:<24} {line.period_start:%Y-%m-%d %H:%M} → "
            f"{line.period_end:%Y-%m-%d %H:%M}  value {line.value:>8}  "
            f"({line.events} events, timestamp {line.timestamp:%Y-%m-%d %H:%M:%S}){note}"
        )
    hidden = len(preview.meter_events) - PREVIEW_LINES_SHOWN
    if hidden > 0:
        click.echo(f"  … and {hidden} more (use --json for all of them)")
    if preview.too_old_events:
        click.echo(
            f"Would fail: {preview.too_old_events} usage events older than Stripe's 35-day window."
        )
    if preview.skipped:
        reasons = ", ".join(f"{name} {count}" for name, count in sorted(preview.skipped.items()))
        click.echo(f"Would skip: {sum(preview.skipped.values())} usage events ({reasons}).")


@click.command("usage-status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def usage_status_command(as_json: bool) -> None:
    """Show the reporting backlog, failed batches, the last successful run and notifications."""
    status = reporting_status(_session(), clock.now())
    notifications = notification_status(_session())
    crowded = organizations_over_seats(_session())
    db.session.rollback()
    if as_json:
        document = {
            **status.as_dict(),
            "notifications": notifications.as_dict(),
            "organizations_over_seats": [vars(org) for org in crowded],
        }
        click.echo(encoding.dumps(document, sort_keys=True))
        return
    seat_lines = [f"Organizations with more members than seats: {len(crowded)}"]
    seat_lines += [f"  {org}" for org in crowded]
    for line in [*status_lines(status), *notification_lines(notifications), *seat_lines]:
        click.echo(line)


def status_lines(status: ReportingStatus) -> list[str]:
    now = status.now
    lines = []
    if status.pending_events:
        assert status.oldest_pending_at is not None
        lines.append(
            f"Backlog: {status.pending_events} usage events waiting, the oldest recorded "
            f"{_ago(now - status.oldest_pending_at)} ago "
            f"({status.oldest_pending_at:%Y-%m-%d %H:%M} UTC)."
        )
    else:
        lines.append("Backlog: empty.")
    if status.pending_batches:
        assert status.oldest_pending_batch_at is not None
        lines.append(
            f"Outbox: {status.pending_batches} meter events ({status.pending_batch_events} usage "
            f"events) waiting to be sent, queued since "
            f"{status.oldest_pending_batch_at:%Y-%m-%d %H:%M} UTC."
        )
    if status.failed_batch_count:
        lines.append(
            f"Failed: {status.failed_batch_count} meter events need attention "
            "(fix the cause, then: flask report-usage --retry-failed)."
        )
        for batch in status.failed_batches:
            failed_at = f"{batch.failed_at:%Y-%m-%d %H:%M}" if batch.failed_at else "?"
            lines.append(
                f"  #{batch.id} {batch.stripe_customer_id} period "
                f"{batch.period_start:%Y-%m-%d}→{batch.period_end:%Y-%m-%d} value {batch.value} "
                f"({batch.event_count} events), failed {failed_at} UTC: {batch.reason}"
            )
        hidden = status.failed_batch_count - len(status.failed_batches)
        if hidden > 0:
            lines.append(f"  … and {hidden} older ones (use --json)")
    else:
        lines.append("Failed: none.")
    if status.unbilled_no_customer:
        lines.append(
            f"Unbilled: {status.unbilled_no_customer} paid usage events of the last 35 days were "
            "skipped because their subscription has no Stripe customer "
            "(docs/operations.md: Recovering failed batches)."
        )
    lines.append("Last successful run: " + _run_text(status.last_successful_run, now))
    last = status.last_run
    if last is not None and (
        status.last_successful_run is None or last.id != status.last_successful_run.id
    ):
        lines.append("Last run: " + _run_text(last, now))
    return lines


def _run_text(run: RunInfo | None, now: datetime) -> str:
    if run is None:
        return "never."
    if run.finished_at is None:
        return (
            f"started {run.started_at:%Y-%m-%d %H:%M:%S} UTC on {run.worker}, "
            "still running or interrupted."
        )
    text = (
        f"{run.finished_at:%Y-%m-%d %H:%M:%S} UTC ({_ago(now - run.finished_at)} ago) on "
        f"{run.worker}: {run.outcome}, {run.events_reported} events in {run.batches_sent} "
        f"meter events, {run.skipped} skipped, {run.failed} failed, {run.pending} pending."
    )
    if run.message:
        text += f" {run.message}"
    return text


def _ago(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def init_app(app: Flask) -> None:
    for command in (report_usage_command, usage_status_command):
        app.cli.add_command(command)


__all__ = ["init_app", "status_lines", "summary_line"]
