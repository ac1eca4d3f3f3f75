"""The notification email's HTML part as a mail client shows it (and its screenshot)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from portal import clock
from portal.demo import seed_demo
from tests.notify.conftest import Mailbox, mailbox, notifying_app, receiver  # noqa: F401

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_screenshots_show_the_usage_email_reading_well_in_a_browser(
    notifying_app: Flask,  # noqa: F811
    session: Session,
    mailbox: Mailbox,  # noqa: F811
    page: Any,
    tmp_path: Path,
) -> None:
    """``make screenshots`` keeps it as docs/screenshots/email-usage-alert.png."""
    seed_demo(session, clock.now())
    session.commit()
    result = notifying_app.test_cli_runner().invoke(args=["send-notifications"])
    assert result.exit_code == 0, result.output
    (email,) = [m for m in mailbox.messages if "pro@demo.example" in str(m["To"])]
    html = str(email.get_body(("html",)).get_content())

    page.set_viewport_size({"width": 640, "height": 700})
    page.set_content(html)
    expect(page.get_by_role("heading", level=1)).to_have_text(str(email["Subject"]))
    expect(page.get_by_role("link", name="See your usage")).to_have_attribute(
        "href", "https://usage.example.com/usage"
    )
    expect(page.get_by_role("link", name="Stop these emails")).to_be_visible()
    keep = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    folder = DOCS_SCREENSHOTS if keep else tmp_path
    page.screenshot(path=str(folder / "email-usage-alert.png"), full_page=True)
