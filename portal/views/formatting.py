"""Jinja filters and helpers: how numbers, money, days and levels read on the page."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

from flask import Flask
from markupsafe import Markup

from portal import clock
from portal.periods import BillingPeriod, last_day
from portal.plans import Plan, WarningLevel, percent_used, upgrade_for, upgrades_from

LEVEL_WORDS = {
    WarningLevel.OK: "OK",
    WarningLevel.WARNING: "Warning",
    WarningLevel.CRITICAL: "Critical",
    WarningLevel.EXCEEDED: "Exceeded",
}


def number(value: int | Decimal) -> str:
    return f"{value:,}"


def euros(cents: int | None) -> str:
    if cents is None:
        return "—"
    return f"€{Decimal(cents) / 100:,.2f}"


def day(value: date | None) -> str:
    """A UTC day, e.g. "Dec 7, 2026" (periods are in UTC): the portal's one date style."""
    return f"{value:%b} {value.day}, {value.year}" if value else "—"


def month_day(value: date) -> str:
    """A day without its year, where the year is said nearby: "Dec 7" (chart axes)."""
    return f"{value:%b} {value.day}"


def days(period: BillingPeriod) -> str:
    """A period by its first and last day: "Nov 7 – Dec 6, 2026"."""
    return days_between(period.start, period.end)


def days_between(start: datetime, end: datetime) -> str:
    """The period ``[start, end)`` by its first and last day, the year once when it does
    not change ("Dec 7, 2026 – Jan 6, 2027" when it does)."""
    first, last = start.date(), last_day(start, end)
    if first.year == last.year:
        return f"{month_day(first)} – {month_day(last)}, {last.year}"
    return f"{day(first)} – {day(last)}"


def moment(value: datetime | None) -> str:
    """An instant in the same style, to the minute: "Dec 7, 2026, 14:02 UTC"."""
    return f"{day(value)}, {value:%H:%M} UTC" if value else "—"


def ago(value: datetime, now: datetime) -> str:
    """How long before ``now``, in the largest whole unit: "just now", "5 minutes ago",
    "2 hours ago", "3 days ago"; the exact time is ``moment``'s."""
    seconds = max(0, int((now - value).total_seconds()))
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "just now"


def time_ago(value: datetime | None, empty: str = "—") -> Markup:
    """``ago`` in a ``<time>`` element whose title and ``datetime`` give the exact UTC time."""
    if value is None:
        return Markup.escape(empty)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        iso_seconds(value), moment(value), ago(value, clock.now())
    )


def iso_seconds(value: datetime) -> str:
    """ISO 8601 in UTC to the whole second, e.g. "2026-12-04T10:00:00Z" (exports, ``<time>``)."""
    return value.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def level_words(level: WarningLevel | str) -> str:
    return LEVEL_WORDS[WarningLevel(level)]


def limit_state(
    level: WarningLevel | str, plan: Plan | None, resets_on: str = ""
) -> tuple[str, str]:
    """What a usage shows, as a CSS state and in words.

    At 100 % a plan's own consequence shows: a hard-capped plan is paused
    until its reset, a paid plan bills the overage. The two must never look
    alike. Without a plan (a member's share of a pool), the level alone.
    """
    level = WarningLevel(level)
    if level is WarningLevel.EXCEEDED and plan is not None:
        if plan.is_hard_capped:
            return "paused", f"Paused until {resets_on}"
        return "over", f"Over the limit · billed at {euros(plan.overage_rate_cents)} each"
    return level.value, LEVEL_WORDS[level]


SHARED_MACROS = {
    "usage_bar": "_macros/usage.html",
    "level_badge": "_macros/usage.html",
    "manage_billing_button": "_macros/usage.html",
    "daily_figure": "_macros/chart.html",
}
"""Widgets many pages draw (the usage bar, level badges, the daily chart): template
globals, not imports, each from the file it is written in."""


def _shared_macro(app: Flask, name: str) -> Callable[..., Markup]:
    """``name`` from its file in ``SHARED_MACROS``, looked up at each call.

    Templates call these without ``{% from … import %}``: an import runs again
    on every render, which cost the live usage region (rendered on every
    poll of every open dashboard) a sixth of its rendering. Looked up at each
    call rather than once, so an edited macro file still reloads in
    development.
    """

    def call(*args: Any, **kwargs: Any) -> Markup:
        module = app.jinja_env.get_template(SHARED_MACROS[name]).module
        return cast(Markup, getattr(module, name)(*args, **kwargs))

    call.__name__ = name
    return call


def init_app(app: Flask) -> None:
    for macro in SHARED_MACROS:
        app.add_template_global(_shared_macro(app, macro), macro)
    app.add_template_filter(number)
    app.add_template_filter(euros)
    app.add_template_filter(day)
    app.add_template_filter(month_day)
    app.add_template_filter(days)
    app.add_template_global(days_between)
    app.add_template_filter(moment)
    app.add_template_global(time_ago)
    app.add_template_global(level_words)
    app.add_template_global(limit_state)
    app.add_template_global(percent_used, "share_of")
    app.add_template_global(upgrade_for)
    app.add_template_global(upgrades_from)
