"""Jinja filters and helpers: how numbers, money, days and levels read on the page."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from flask import Flask
from markupsafe import Markup

from portal.plans import WarningLevel, percent_used, upgrade_for, upgrades_from

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


SHARED_MACROS = "_macros/usage.html"
"""Widgets many pages draw (the usage bar, level badges): template globals, not imports."""


def _shared_macro(app: Flask, name: str) -> Callable[..., Markup]:
    """``name`` from ``SHARED_MACROS``, looked up at each call.

    Templates call these without ``{% from … import %}``: an import runs again
    on every render, which cost the live usage region (rendered on every
    poll of every open dashboard) a sixth of its rendering. Looked up at each
    call rather than once, so an edited macro file still reloads in
    development.
    """

    def call(*args: Any, **kwargs: Any) -> Markup:
        module = app.jinja_env.get_template(SHARED_MACROS).module
        return cast(Markup, getattr(module, name)(*args, **kwargs))

    call.__name__ = name
    return call


def init_app(app: Flask) -> None:
    for macro in ("usage_bar", "level_badge", "manage_billing_button"):
        app.add_template_global(_shared_macro(app, macro), macro)
    app.add_template_filter(number)
    app.add_template_filter(euros)
    app.add_template_filter(day)
    app.add_template_filter(moment)
    app.add_template_global(level_words)
    app.add_template_global(percent_used, "share_of")
    app.add_template_global(upgrade_for)
    app.add_template_global(upgrades_from)
