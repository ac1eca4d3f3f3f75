from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from portal import clock
from portal.usage import record_usage
from tests.factories import make_org, make_user
from tests.outage import database_down
from tests.views.conftest import PASSWORD

Page = Any


def sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/usage")


def test_the_bar_updates_within_one_poll_without_a_reload(
    app: Flask, session: Session, live_server: str, page: Page
) -> None:
    app.config["POLL_SECONDS"] = 1  # the setting; production polls every 10 s
    user = make_user(
        session, plan="starter", password=PASSWORD, anchor=clock.now() - timedelta(days=3)
    )
    session.commit()
    sign_in(page, live_server, user.email)
    used = page.get_by_test_id("used")
    assert used.inner_text() == "0"
    bar = page.get_by_role("progressbar", name="Suggestions used this period")
    assert bar.get_attribute("value") == "0"
    page.evaluate("window.__notReloaded = true")

    record_usage(session, user.id, idempotency_key="browser-1", now=clock.now(), quantity=21)
    session.commit()

    # Playwright's assertions retry until the next poll (no page eval: the CSP forbids it).
    expect(used).to_have_text("21", timeout=5_000)
    assert page.evaluate("window.__notReloaded") is True  # swapped in place, not reloaded
    assert bar.get_attribute("value") == "21"
    assert "84.0%" in page.get_by_test_id("alert").inner_text()


def test_admin_sorts_and_filters_and_back_restores_the_table(
    session: Session, live_server: str, page: Page
) -> None:
    org = make_org(session, plan="team", seats=6, anchor=clock.now() - timedelta(days=2))
    admin = make_user(
        session,
        org=org,
        role="admin",
        password=PASSWORD,
        name="Ada Admin",
        email="ada@corp.example",
    )
    for n, (name, used) in enumerate([("Bea", 12), ("Cy", 40), ("Dee", 3)]):
        member = make_user(session, org=org, name=name, email=f"{name.lower()}@corp.example")
        record_usage(session, member.id, idempotency_key=f"b{n}", now=clock.now(), quantity=used)
    session.commit()
    sign_in(page, live_server, admin.email)
    page.goto(f"{live_server}/orgs/{org.slug}/usage")

    rows = page.locator("[data-testid=member-table] tbody tr")
    first_cells = page.locator("[data-testid=member-table] tbody tr td:first-child")

    def names() -> list[str]:
        return first_cells.all_inner_texts()

    assert names() == ["Cy", "Bea", "Dee", "Ada Admin"]  # most used first
    page.locator("a[data-sort=name]").click()
    page.wait_for_url("**sort=name**")
    expect(first_cells).to_have_text(["Ada Admin", "Bea", "Cy", "Dee"])

    page.get_by_label("Filter members by name or email").fill("de")
    page.wait_for_url("**q=de**")
    expect(first_cells).to_have_text(["Dee"])
    filtered = names()
    assert "sort=name" in page.url  # filtering kept the sort

    page.go_back()
    expect(rows).to_have_count(4)
    expect(first_cells).to_have_text(["Ada Admin", "Bea", "Cy", "Dee"])
    assert "q=de" not in page.url
    page.go_forward()
    expect(first_cells).to_have_text(filtered)


def test_a_failing_poll_keeps_the_figures_says_so_and_recovers(
    app: Flask, session: Session, live_server: str, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.config["POLL_SECONDS"] = 1
    user = make_user(session, plan="starter", password=PASSWORD)
    session.commit()
    record_usage(session, user.id, idempotency_key="before", now=clock.now(), quantity=7)
    session.commit()
    sign_in(page, live_server, user.email)
    used = page.get_by_test_id("used")
    expect(used).to_have_text("7")
    stale = page.locator("#current-usage [data-stale]")

    app.config["PORTAL_MAINTENANCE"] = True
    expect(stale).to_contain_text("Not updated since", timeout=5_000)
    expect(stale).to_contain_text("down for maintenance")
    expect(used).to_have_text("7")  # the last figures stay, marked stale
    app.config["PORTAL_MAINTENANCE"] = False
    expect(stale).to_have_count(0, timeout=5_000)

    with database_down(app, monkeypatch):
        expect(stale).to_contain_text("cannot reach its database", timeout=5_000)
        expect(used).to_have_text("7")
    record_usage(session, user.id, idempotency_key="after", now=clock.now(), quantity=2)
    session.commit()
    expect(used).to_have_text("9", timeout=5_000)
    expect(stale).to_have_count(0)
    # The failed polls were logged by the browser; nothing else was.
    unexpected = [e for e in page.console_errors if "503" not in e and "htmx:" not in e]
    assert unexpected == []
    page.console_errors.clear()
