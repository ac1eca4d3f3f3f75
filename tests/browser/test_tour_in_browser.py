"""Every page as every kind of demo user, on two phones and a desktop.

At 390 and 360 CSS pixels wide (and at 800 and 1280) no page scrolls sideways, nothing
sticks out past the right edge, chart text is readable, and axe-core finds no
accessibility violation of any impact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from portal import clock
from portal.demo import DEMO_PASSWORD, seed_demo
from tests.billing.helpers import API_KEY
from tests.browser.test_portal_in_browser import sign_in
from tests.browser.tour import DESKTOP, PHONES, TABLET, Page, problems_at

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WIDTHS = (*PHONES, TABLET, DESKTOP)
EVERYONE = ["/usage", "/usage/history", "/settings/notifications", "/no-such-page"]

# (sign-in, the pages they see): each kind of user the portal shows differently.
TOURS = {
    "free plan, warning": ("free@demo.example", EVERYONE),
    "free plan, paused at its cap": ("capped@demo.example", EVERYONE),
    "starter plan, critical": ("starter@demo.example", EVERYONE),
    "pro plan, in overage": ("pro@demo.example", EVERYONE),
    "pro plan, trialing": ("trial@demo.example", EVERYONE),
    "team member": ("farid.okafor@acme.example", [*EVERYONE, "/orgs/acme/usage"]),
    "team admin": ("admin@acme.example", [*EVERYONE, "/orgs/acme/usage", "member history"]),
    "business admin": ("admin@globex.example", ["/orgs/globex/usage", "member history"]),
}


def tour(page: Page, base: str, paths: list[str]) -> list[str]:
    problems = []
    for path in paths:
        if path == "member history":
            page.set_viewport_size({"width": DESKTOP, "height": 900})
            page.goto(page.url)
            page.locator("[data-testid=member-table] tbody a").first.click()
            page.wait_for_url("**/history")
        else:
            page.goto(base + path)
        for width in WIDTHS:
            problems += problems_at(page, width)
    return problems


@pytest.mark.parametrize("kind", TOURS)
def test_every_page_fits_a_phone_and_passes_axe(
    kind: str, app: Flask, session: Session, live_server: str, page: Page
) -> None:
    # Billing on, so the upgrade and billing buttons are on the pages too; showing
    # them asks nothing of Stripe.
    app.config.update(STRIPE_API_KEY=API_KEY, PORTAL_BASE_URL=live_server)
    seed_demo(session, clock.now())
    session.commit()
    email, paths = TOURS[kind]
    sign_in(page, live_server, email, DEMO_PASSWORD)
    problems = tour(page, live_server, paths)
    forget_expected_errors(page)
    assert problems == []


def test_signed_out_and_maintenance_pages_fit_a_phone_and_pass_axe(
    app: Flask, live_server: str, page: Page
) -> None:
    problems = tour(page, live_server, ["/login", "/nowhere"])
    app.config["PORTAL_MAINTENANCE"] = True
    problems += tour(page, live_server, ["/login"])
    forget_expected_errors(page)
    assert problems == []


def forget_expected_errors(page: Page) -> None:
    """The browser logs the error pages the tour asked for on purpose; nothing else may be."""
    page.console_errors[:] = [
        e for e in page.console_errors if not re.search(r"status of (404|403|503)", e)
    ]


# (file name, who, the page, what the caption says): README.md shows each pair.
SCREENSHOTS = [
    ("sign-in", None, "/login"),
    ("dashboard-team-member", "farid.okafor@acme.example", "/usage"),
    ("dashboard-overage", "pro@demo.example", "/usage"),
    ("dashboard-paused", "capped@demo.example", "/usage"),
    ("history", "pro@demo.example", "/usage/history"),
    ("history-team-member", "farid.okafor@acme.example", "/usage/history"),
    ("organization", "admin@acme.example", "/orgs/acme/usage"),
    ("member-history", "admin@acme.example", "member history"),
    ("notifications", "farid.okafor@acme.example", "/settings/notifications"),
    ("error-not-found", "farid.okafor@acme.example", "/no-such-page"),
]


def test_screenshots_of_every_page_on_a_desktop_and_a_phone(
    session: Session, live_server: str, page: Page, tmp_path: Path
) -> None:
    """Every run takes them; ``make screenshots`` keeps them in docs/screenshots."""
    keep = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    folder = DOCS_SCREENSHOTS if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    seed_demo(session, clock.now())
    session.commit()
    signed_in = None
    for name, email, path in SCREENSHOTS:
        if email != signed_in:
            page.context.clear_cookies()
            if email:
                sign_in(page, live_server, email, DEMO_PASSWORD)
            signed_in = email
        if path == "member history":
            page.goto(f"{live_server}/orgs/acme/usage")
            page.locator("[data-member='farid.okafor@acme.example'] a").click()
            page.wait_for_url("**/history")
        else:
            page.goto(live_server + path)
        for device, width in (("desktop", DESKTOP), ("phone", PHONES[0])):
            page.set_viewport_size({"width": width, "height": 900 if device == "desktop" else 844})
            shot = folder / f"{name}-{device}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000, shot
    forget_expected_errors(page)
