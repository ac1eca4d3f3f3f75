"""A session that ends under an open dashboard, as its user sees it."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from tests.browser.test_portal_in_browser import sign_in
from tests.factories import make_user
from tests.views.conftest import PASSWORD


def test_a_session_ended_elsewhere_sends_the_dashboard_to_sign_in_and_back(
    app: Flask, session: Session, live_server: str, page: Any
) -> None:
    app.config["POLL_SECONDS"] = 1  # the setting; production polls every 10 s
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    sign_in(page, live_server, user.email)

    ended = app.test_cli_runner().invoke(args=["sign-out-user", "--email", user.email])
    assert ended.exit_code == 0, ended.output

    expect(page).to_have_url(re.compile(r"/login\?next=/usage$"), timeout=5_000)
    expect(page.get_by_role("status")).to_have_text("Your session ended; sign in again.")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server}/usage")
    expect(page.get_by_test_id("used")).to_have_text("0")
    # The poll's 401 is how the server said the session ended: expected here.
    page.console_errors[:] = [e for e in page.console_errors if "status of 401" not in e]
