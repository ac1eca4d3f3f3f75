"""Jinja filters and helpers: how numbers, money, days and levels read on the page."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from flask import Flask

from portal.plans import WarningLevel, percent_used, upgrade_for

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


def day(moment: datetime | None) -> str:
    """A UTC day, e.g. "Dec 7, 2026" (periods are in UTC)."""
    return f"{moment:%b} {moment.day}, {moment.year}" if moment else "—"


def moment(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "—"


def level_words(level: WarningLevel | str) -> str:
    return LEVEL_WORDS[WarningLevel(level)]


def init_app(app: Flask) -> None:
    app.add_template_filter(number)
    app.add_template_filter(euros)
    app.add_template_filter(day)
    app.add_template_filter(moment)
    app.add_template_global(level_words)
    app.add_template_global(percent_used, "share_of")
    app.add_template_global(upgrade_for)
