"""The daily chart's "Daily figures" table in a real browser, across the live region's polls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from portal.usage import record_usage
from tests.browser.test_portal_in_browser import sign_in
from tests.factories import FrozenClock, make_user
from tests.views.conftest import PASSWORD

Page = Any


def test_the_daily_figures_open_and_stay_open_across_a_poll(
    app: Flask, session: Session, live_server: str, page: Page, clock: FrozenClock
) -> None:
    app.config["POLL_SECONDS"] = 1
    anchor = datetime(2026, 11, 7, tzinfo=UTC)
    user = make_user(session, plan="pro", anchor=anchor, password=PASSWORD)
    session.commit()
    morning = datetime(2026, 11, 7, 9, tzinfo=UTC)
    record_usage(
        session, user.id, idempotency_key="a", now=morning, occurred_at=morning, quantity=12
    )
    session.commit()
    clock.now = datetime(2026, 11, 9, 12, tzinfo=UTC)
    sign_in(page, live_server, user.email)

    chart = page.get_by_role("img", name="Your usage day by day")
    expect(chart).to_have_accessible_name(
        "Your usage day by day: 12 suggestions so far, 3 days in; projected 144 of 75 by Dec 7"
    )
    table = page.get_by_role("table", name="Your usage day by day, Nov 7 – Dec 6, 2026")
    expect(table).to_be_hidden()
    page.get_by_text("Daily figures").click()
    expect(table).to_be_visible()
    page.evaluate("window.__notReloaded = true")

    record_usage(session, user.id, idempotency_key="b", now=clock.now, quantity=5)
    session.commit()

    # The next poll swaps the region in: new figures, and the table still open.
    expect(page.get_by_test_id("used")).to_have_text("17", timeout=5_000)
    assert page.evaluate("window.__notReloaded") is True
    expect(table).to_be_visible()
    rows = table.get_by_role("row")
    expect(rows).to_have_count(4)  # the header and three days
    expect(rows.nth(1)).to_have_text("Nov 7, 2026 12 12")
    expect(rows.nth(2)).to_have_text("Nov 8, 2026 0 12")
    expect(rows.nth(3)).to_have_text("Nov 9, 2026 5 17")

    # Closed again, it stays closed through the next change.
    page.get_by_text("Daily figures").click()
    record_usage(session, user.id, idempotency_key="c", now=clock.now, quantity=1)
    session.commit()
    expect(page.get_by_test_id("used")).to_have_text("18", timeout=5_000)
    expect(table).to_be_hidden()
