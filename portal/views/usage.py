"""The customer's own usage: the dashboard, its live region, and history."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import Connection

from portal import clock
from portal.extensions import db
from portal.usage import UnknownUser, UsageStatus, get_usage_history
from portal.usage.status import current_usage_status
from portal.views.charts import history_chart
from portal.views.live_region import PATH, POLL_SECONDS, live_region_answer, render_region
from portal.views.reads import read_connection
from portal.views.security import SignedInUser, read_user_with, unauthorized

blueprint = Blueprint("usage", __name__)


def _user_with_usage(connection: Connection, user_id: int) -> SignedInUser | None:
    """The signed-in user, read in the same statement as their usage (kept for the view).

    ``UsageStatus`` names its user, so the pages with the usage bar, polled by
    every open dashboard, need one round trip to the database instead of two.
    """
    try:
        status = current_usage_status(connection, user_id, clock.now())
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
        return current_usage_status(read_connection(), current_user.id, clock.now())
    except UnknownUser:
        return None


@blueprint.get("/usage")
@login_required
def dashboard() -> Response | str:
    """The usage bar, plan, period and alerts for the signed-in user."""
    status = _signed_in_status()
    if status is None:
        return unauthorized()
    return render_template(
        "usage/dashboard.html",
        status=status,
        poll_seconds=POLL_SECONDS,
        poll_url=url_for("usage.current"),
    )


@blueprint.get(PATH)
@login_required
def current() -> Response:
    """The live usage region alone, for HTMX polling; 304 when nothing changed.

    Most polls are answered in front of Flask by ``LiveRegionEndpoint`` with
    the same parts; this view answers the rest (see ``portal.views.live_region``).
    """
    status = _signed_in_status()
    if status is None:
        return unauthorized()
    poll_url = url_for("usage.current")
    answer = live_region_answer(
        status,
        request.headers.get("If-None-Match"),
        lambda current: render_region(current_app.jinja_env, current, poll_url),
    )
    return Response(answer.body, answer.status, answer.headers)


read_user_with("usage.dashboard", _user_with_usage)
read_user_with("usage.current", _user_with_usage)


@blueprint.get("/usage/history")
@login_required
def history() -> str:
    """The last 12 billing periods: chart and table."""
    history = get_usage_history(db.session(), current_user.id, clock.now())
    chart = history_chart(history.periods, [row.included for row in history.periods])
    return render_template("usage/history.html", history=history, chart=chart)
