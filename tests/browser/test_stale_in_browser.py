"""A dashboard whose server goes away under it, as its user sees it."""

from __future__ import annotations

from typing import Any

from flask import Flask
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from portal import clock
from portal.usage import record_usage
from tests.browser.conftest import serve, stop
from tests.browser.test_portal_in_browser import sign_in
from tests.factories import make_user
from tests.views.conftest import PASSWORD


def test_a_server_gone_away_leaves_the_figures_marked_stale_and_they_recover_by_themselves(
    app: Flask, session: Session, page: Any
) -> None:
    app.config["POLL_SECONDS"] = 1
    user = make_user(session, plan="starter", password=PASSWORD)
    session.commit()
    record_usage(session, user.id, idempotency_key="before", now=clock.now(), quantity=7)
    session.commit()
    server, thread = serve(app)
    port = server.server_port
    base = f"http://127.0.0.1:{port}"
    try:
        sign_in(page, base, user.email)
        used = page.get_by_test_id("used")
        stale = page.locator("#current-usage [data-stale]")
        expect(used).to_have_text("7")

        stop(server, thread)  # the server is gone: connections are refused
        expect(stale).to_contain_text("Not updated since", timeout=5_000)
        expect(stale).to_contain_text("retrying")
        expect(page.locator("#current-usage")).to_have_class("current-usage stale")
        expect(used).to_have_text("7")  # the last figures stay, marked stale

        record_usage(session, user.id, idempotency_key="meanwhile", now=clock.now(), quantity=2)
        session.commit()
        server, thread = serve(app, port)  # back, on the same address
        expect(used).to_have_text("9", timeout=5_000)
        expect(stale).to_have_count(0)
    finally:
        stop(server, thread)
    # The refused polls were logged as failed loads and by htmx's own error
    # events; nothing else was.
    page.console_errors[:] = [
        e for e in page.console_errors if "ERR_CONNECTION_REFUSED" not in e and "htmx:" not in e
    ]
