"""The customer's own usage: the dashboard, its live region, and history."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from flask import Blueprint, Response, make_response, render_template, request
from flask_login import current_user, login_required

from portal.extensions import db
from portal.usage import UsageStatus, get_current_usage, get_usage_history
from portal.views.charts import history_chart

blueprint = Blueprint("usage", __name__)

POLL_SECONDS = 10


def _now() -> datetime:
    return datetime.now(UTC)


def status_etag(status: UsageStatus) -> str:
    """Changes whenever anything the live region shows changes."""
    facts = (
        status.plan.id,
        status.subject,
        status.period.start,
        status.used,
        status.included,
        status.member_used,
        status.days_remaining,
        status.projected_used,
    )
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:20]


@blueprint.get("/usage")
@login_required
def dashboard() -> str:
    """The usage bar, plan, period and alerts for the signed-in user."""
    status = get_current_usage(db.session(), current_user.id, _now())
    return render_template("usage/dashboard.html", status=status, poll_seconds=POLL_SECONDS)


@blueprint.get("/usage/current")
@login_required
def current() -> Response:
    """The live usage region alone, for HTMX polling; 304 when nothing changed."""
    status = get_current_usage(db.session(), current_user.id, _now())
    etag = status_etag(status)
    if request.if_none_match.contains(etag):
        response = make_response("", 304)
    else:
        response = make_response(
            render_template(
                "partials/usage/_current.html", status=status, poll_seconds=POLL_SECONDS
            )
        )
    response.set_etag(etag)
    # Revalidate every time: the bar must never be stale, but an unchanged
    # one costs a 304 and no rendering.
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@blueprint.get("/usage/history")
@login_required
def history() -> str:
    """The last 12 billing periods: chart and table."""
    history = get_usage_history(db.session(), current_user.id, _now())
    chart = history_chart(history.periods, [row.included for row in history.periods])
    return render_template("usage/history.html", history=history, chart=chart)
