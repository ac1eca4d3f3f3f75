"""The customer's own usage: the dashboard, its live region, and history."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from flask import Blueprint, Response, g, make_response, render_template, request
from flask_login import current_user, login_required
from sqlalchemy import Connection

from portal.extensions import db
from portal.usage import UnknownUser, UsageStatus, get_usage_history
from portal.usage.status import current_usage_status
from portal.views.charts import history_chart
from portal.views.reads import read_connection
from portal.views.security import SignedInUser, read_user_with, unauthorized

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
        # Two anchors can start a period on the same day and end it on different ones.
        status.period.end,
        status.used,
        status.included,
        status.member_used,
        status.days_remaining,
        status.projected_used,
    )
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:20]


def _user_with_usage(connection: Connection, user_id: int) -> SignedInUser | None:
    """The signed-in user, read in the same statement as their usage (kept for the view).

    ``UsageStatus`` names its user, so the pages with the usage bar, polled by
    every open dashboard, need one round trip to the database instead of two.
    """
    try:
        status = current_usage_status(connection, user_id, _now())
    except UnknownUser:
        return None
    g.signed_in_usage = status
    return SignedInUser(status.user_id, status.email)


def _signed_in_status() -> UsageStatus | None:
    """The signed-in user's usage now; ``None`` if the account went away meanwhile."""
    loaded: UsageStatus | None = g.pop("signed_in_usage", None)
    if loaded is not None and loaded.user_id == current_user.id:
        return loaded
    # The user came from elsewhere (signed in during this request, say).
    try:
        return current_usage_status(read_connection(), current_user.id, _now())
    except UnknownUser:
        return None


@blueprint.get("/usage")
@login_required
def dashboard() -> Response | str:
    """The usage bar, plan, period and alerts for the signed-in user."""
    status = _signed_in_status()
    if status is None:
        return unauthorized()
    return render_template("usage/dashboard.html", status=status, poll_seconds=POLL_SECONDS)


@blueprint.get("/usage/current")
@login_required
def current() -> Response:
    """The live usage region alone, for HTMX polling; 304 when nothing changed."""
    status = _signed_in_status()
    if status is None:
        return unauthorized()
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


read_user_with("usage.dashboard", _user_with_usage)
read_user_with("usage.current", _user_with_usage)


@blueprint.get("/usage/history")
@login_required
def history() -> str:
    """The last 12 billing periods: chart and table."""
    history = get_usage_history(db.session(), current_user.id, _now())
    chart = history_chart(history.periods, [row.included for row in history.periods])
    return render_template("usage/history.html", history=history, chart=chart)
