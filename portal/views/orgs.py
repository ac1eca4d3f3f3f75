"""The organization admin's pages: the pool, the member table, exports and member history."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from datetime import date

from flask import Blueprint, Response, abort, render_template, request, stream_with_context
from flask_login import current_user, login_required

from portal import clock
from portal.access import Forbidden, NotVisible, member_of, organization_for_admin
from portal.extensions import db
from portal.models import Organization
from portal.periods import BillingPeriod
from portal.usage import MemberSort, get_org_usage_summary, iter_org_member_usage
from portal.usage.daily import member_daily_usage, pool_daily_usage
from portal.usage.organizations import (
    DEFAULT_PAGE_SIZE,
    get_member_history,
    organization_period,
)
from portal.views.charts import daily_chart, history_chart
from portal.views.formatting import iso_seconds

log = logging.getLogger(__name__)
blueprint = Blueprint("orgs", __name__, url_prefix="/orgs")
PICKER_PERIODS = 12
CSV_HEADER = [
    "name",
    "email",
    "role",
    "used",
    "share_of_pool_percent",
    "warning_level",
    "last_activity_utc",
    "account_status",
]


def administered(slug: str) -> Organization:
    """The organization if the signed-in user administers it; 403 for members, else 404."""
    try:
        return organization_for_admin(db.session(), current_user.id, slug)
    except Forbidden:
        abort(403)
    except NotVisible:
        abort(404)


def _periods(org: Organization) -> list[BillingPeriod]:
    current = organization_period(org, clock.now())
    return [current.shifted(-offset) for offset in range(PICKER_PERIODS)]


def _chosen_period(periods: list[BillingPeriod]) -> BillingPeriod:
    """The period named by ``?period=YYYY-MM-DD`` (its start day); the current one by default."""
    wanted = request.args.get("period", "")
    if not wanted:
        return periods[0]
    try:
        day = date.fromisoformat(wanted)
    except ValueError:
        abort(404)
    for period in periods:
        if period.start.date() == day:
            return period
    abort(404)


MAX_PAGE = 100_000
"""Past this no organization has members to show (pages of 25)."""


def _table_state() -> tuple[MemberSort, bool, str, int]:
    """Sort, direction, filter and page from the query string; defaults for what is not there.

    A filter with a NUL character cannot be searched for (400); a page number
    past any organization's last page is not found (404).
    """
    try:
        sort = MemberSort(request.args.get("sort", MemberSort.USED))
    except ValueError:
        sort = MemberSort.USED
    descending = request.args.get("dir", "desc" if sort.most_first else "asc") == "desc"
    search = request.args.get("q", "")[:100]
    if "\x00" in search:
        abort(400)
    text = request.args.get("page", "1")
    page = int(text) if text.isascii() and text.isdigit() and 0 < len(text) < 10 else 1
    if page > MAX_PAGE:
        abort(404)
    return sort, descending, search, max(page, 1)


@blueprint.get("/<slug>/usage")
@login_required
def usage(slug: str) -> str:
    """The pool, totals and the member table; the table region alone for HTMX."""
    org = administered(slug)
    periods = _periods(org)
    period = _chosen_period(periods)
    sort, descending, search, page = _table_state()
    summary = get_org_usage_summary(
        db.session(),
        org,
        period,
        sort=sort,
        descending=descending,
        search=search,
        page=page,
        page_size=DEFAULT_PAGE_SIZE,
    )
    if summary.rows == [] and page > summary.page_count:
        abort(404)
    context = {
        "summary": summary,
        "periods": periods,
        "period": period,
        "pool_alerts": org.pool_alerts,
        "MemberSort": MemberSort,
    }
    partial = request.headers.get("HX-Request") and not request.headers.get(
        "HX-History-Restore-Request"
    )
    if partial:
        return render_template("partials/orgs/_members.html", standalone=True, **context)
    daily = pool_daily_usage(db.session(), org, period, clock.now())
    return render_template(
        "orgs/usage.html", daily=daily, daily_chart=daily_chart(daily), **context
    )


@blueprint.get("/<slug>/usage.csv")
@login_required
def usage_csv(slug: str) -> Response:
    """Every member's row for the chosen period, streamed as CSV."""
    org = administered(slug)
    period = _chosen_period(_periods(org))
    sort, descending, search, _ = _table_state()
    rows = iter_org_member_usage(
        db.session(), org, period, sort=sort, descending=descending, search=search
    )

    def generate() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_HEADER)
        written = 0
        try:
            for row in rows:
                writer.writerow(
                    [
                        _cell(row.display_name),
                        _cell(row.email),
                        row.role,
                        row.used,
                        f"{row.share_percent}",
                        str(row.warning_level),
                        iso_seconds(row.last_used_at) if row.last_used_at else "",
                        "disabled" if row.disabled else "active",
                    ]
                )
                written += 1
                if buffer.tell() > 16_384:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        except Exception:
            # The status line went out long ago: the only way left to say "this
            # file is incomplete" is to break the transfer (no final chunk), which
            # re-raising does. Ending quietly would hand the client a short file
            # that looks whole.
            log.exception("CSV export of %s broke off after %d rows", org.slug, written)
            raise
        yield buffer.getvalue()

    filename = f"{org.slug}-usage-{period.start:%Y-%m-%d}-to-{period.last_day:%Y-%m-%d}.csv"
    return Response(
        stream_with_context(generate()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _cell(text: str) -> str:
    # A cell starting with = + - @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@blueprint.get("/<slug>/members/<int:member_id>/history")
@login_required
def member_history(slug: str, member_id: int) -> str:
    """One member's part of the pool: this period day by day, and the last 12 periods."""
    org = administered(slug)
    try:
        member = member_of(db.session(), org, member_id)
    except NotVisible:
        abort(404)
    now = clock.now()
    periods = get_member_history(db.session(), org, member.id, now)
    chart = history_chart(periods, [row.seat_included for row in periods])
    daily = member_daily_usage(db.session(), org, member.id, now)
    return render_template(
        "orgs/member_history.html",
        org=org,
        member=member,
        periods=periods,
        chart=chart,
        daily=daily,
        daily_chart=daily_chart(daily),
    )
