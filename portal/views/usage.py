"""The customer's own usage: the dashboard, its polled live region, and history."""

from __future__ import annotations

import hashlib
from datetime import date, datetime

from flask import Blueprint, Response, current_app, render_template, request, url_for
from flask_login import current_user, login_required
from werkzeug.http import parse_etags, quote_etag

from portal import clock
from portal.extensions import db
from portal.periods import as_utc
from portal.plans import PLANS
from portal.usage import UnknownUser, UsageStatus, check_usage, get_usage_history
from portal.usage.daily import daily_usage
from portal.views.charts import daily_chart, history_chart
from portal.views.security import unauthorized

blueprint = Blueprint("usage", __name__)

REGION_TEMPLATE = "partials/usage/_current.html"
CACHE_CONTROL = "private, no-cache"
"""Revalidate every time: the bar must never be stale, but an unchanged one costs a 304."""


def status_etag(status: UsageStatus, today: date) -> str:
    """Changes whenever anything the live region shows changes.

    The daily chart needs no read of its own here: a period's events are only
    ever added (or moved between periods by a plan change), each changing ``used``,
    so ``used`` and the period name its days' figures; ``today`` adds the new
    day's bar at midnight UTC, usage or not. So an unchanged region is still
    answered without reading the days.
    """
    facts = (
        today,
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
        status.disabled,
        status.terms,
        _upgrading(),
        current_app.config["POLL_SECONDS"],
    )
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:20]


def _upgrading() -> str | None:
    """The plan a checkout just paid for (``?upgrading=pro``), until the webhook applies it."""
    plan = request.args.get("upgrading", "")
    return plan if plan in PLANS else None


def _region_context(status: UsageStatus, now: datetime) -> dict[str, object]:
    """What the live region's template needs, whether in the page or alone."""
    upgrading = _upgrading()
    daily = daily_usage(
        db.session(), status.subject, status.period, now, plan=status.plan, included=status.included
    )
    return {
        "status": status,
        "daily": daily,
        "daily_chart": daily_chart(daily),
        "upgrading": upgrading,
        "poll_seconds": current_app.config["POLL_SECONDS"],
        "poll_url": url_for("usage.current", upgrading=upgrading),
    }


def _signed_in_status(now: datetime) -> UsageStatus | None:
    """The signed-in user's usage at ``now``; ``None`` if the account went away meanwhile."""
    try:
        return check_usage(db.session(), current_user.id, now)
    except UnknownUser:
        return None


@blueprint.get("/usage")
@login_required
def dashboard() -> Response | str:
    """The usage bar, plan, period, daily chart and alerts for the signed-in user."""
    now = clock.now()
    status = _signed_in_status(now)
    if status is None:
        return unauthorized()
    return render_template("usage/dashboard.html", **_region_context(status, now))


@blueprint.get("/usage/current")
@login_required
def current() -> Response:
    """The live usage region alone, for HTMX polling: one read, and 304 when nothing changed.

    Every open dashboard polls this, so it is the page served most: an
    unchanged region is answered from its ETag without rendering.
    """
    now = clock.now()
    status = _signed_in_status(now)
    if status is None:
        return unauthorized()
    etag = status_etag(status, as_utc(now).date())
    headers = {"ETag": quote_etag(etag), "Cache-Control": CACHE_CONTROL, "Vary": "Cookie"}
    if parse_etags(request.headers.get("If-None-Match")).contains(etag):
        return Response(status=304, headers=headers)
    # The days are read only now: a 304 needs nothing but the status. Usage recorded
    # between the two reads shows in the chart a poll before the bar; the next poll's
    # ETag (a new ``used``) brings the bar level.
    body = render_template(REGION_TEMPLATE, **_region_context(status, now))
    return Response(body, 200, headers, mimetype="text/html")


@blueprint.get("/usage/history")
@login_required
def history() -> str:
    """The last 12 billing periods: chart and table."""
    history = get_usage_history(db.session(), current_user.id, clock.now())
    rows = history.periods
    chart = history_chart(rows, [row.included for row in rows], [row.member_used for row in rows])
    return render_template("usage/history.html", history=history, chart=chart)
