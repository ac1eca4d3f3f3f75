"""Keyboard focus survives the member table's swaps (sort, page, filter).

The table is replaced whole; a keyboard user must not be sent back to the top of
the page: focus stays on the control they used, or lands on the table's caption
when the new table has no such control.
"""

from __future__ import annotations

from datetime import timedelta

from playwright.sync_api import expect
from sqlalchemy.orm import Session

from portal import clock
from portal.usage import record_usage
from tests.browser.test_portal_in_browser import sign_in
from tests.browser.tour import Page
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD


def org_of(session: Session, members: int) -> str:
    """An org of ``members`` members (25 a page) and its admin, signed in as next."""
    org = make_org(session, plan="team", seats=members, anchor=clock.now() - timedelta(days=2))
    admin = {"name": "Ada Admin", "email": "ada@corp.example"}
    make_user(session, org=org, role="admin", password=PASSWORD, **admin)
    for n in range(members - 1):
        member = make_user(session, org=org, name=f"Member {n:02d}", email=f"m{n:02d}@corp.example")
        record_usage(session, member.id, idempotency_key=f"f{n}", now=clock.now(), quantity=n + 1)
    session.commit()
    return org.slug


def body_has_focus(page: Page) -> bool:
    return bool(page.evaluate("document.activeElement === document.body"))


def test_sorting_by_keyboard_keeps_focus_on_the_sort_link(
    session: Session, live_server: str, page: Page
) -> None:
    slug = org_of(session, 4)
    sign_in(page, live_server, "ada@corp.example")
    page.goto(f"{live_server}/orgs/{slug}/usage")
    first_cells = page.locator("[data-testid=member-table] tbody tr td:first-child")

    page.locator("a[data-sort=name]").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**sort=name**")
    expect(first_cells.first).to_have_text("Ada Admin")  # the table was replaced
    expect(page.locator("a[data-sort=name]")).to_be_focused()

    page.keyboard.press("Enter")  # again: the other way round, still from the same link
    page.wait_for_url("**dir=desc**")
    expect(first_cells.first).to_have_text("Member 02")
    expect(page.locator("a[data-sort=name]")).to_be_focused()
    assert not body_has_focus(page)


def test_paging_by_keyboard_keeps_focus_on_next_or_else_the_caption(
    session: Session, live_server: str, page: Page
) -> None:
    slug = org_of(session, 60)  # three pages
    sign_in(page, live_server, "ada@corp.example")
    page.goto(f"{live_server}/orgs/{slug}/usage")
    caption = page.locator("#members-caption")

    page.locator("a[rel=next]").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**page=2**")
    expect(caption).to_contain_text("page 2 of 3")
    expect(page.locator("a[rel=next]")).to_be_focused()

    page.keyboard.press("Enter")
    page.wait_for_url("**page=3**")
    expect(page.locator("a[rel=next]")).to_have_count(0)  # the last page has no "Next"
    expect(caption).to_be_focused()
    expect(caption).to_contain_text("page 3 of 3")

    page.locator("a[rel=prev]").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**page=2**")
    expect(page.locator("a[rel=prev]")).to_be_focused()
    assert not body_has_focus(page)


def test_filtering_keeps_focus_on_the_field_or_the_filter_button(
    session: Session, live_server: str, page: Page
) -> None:
    slug = org_of(session, 30)
    sign_in(page, live_server, "ada@corp.example")
    page.goto(f"{live_server}/orgs/{slug}/usage")
    rows = page.locator("[data-testid=member-table] tbody tr")
    search = page.get_by_label("Filter members by name or email")

    search.focus()
    page.keyboard.type("member 1")
    page.wait_for_url("**q=member**")
    expect(rows).to_have_count(10)
    expect(search).to_be_focused()

    page.keyboard.type("2")
    page.get_by_role("button", name="Filter").focus()
    page.keyboard.press("Enter")
    expect(rows).to_have_count(1)
    expect(page.get_by_role("button", name="Filter")).to_be_focused()
    assert not body_has_focus(page)


def test_the_stacked_member_table_keeps_saying_it_is_a_table(
    session: Session, live_server: str, page: Page
) -> None:
    # On a phone its rows are blocks; some screen readers then stop reading a table.
    page.set_viewport_size({"width": 390, "height": 844})
    slug = org_of(session, 4)
    sign_in(page, live_server, "ada@corp.example")
    page.goto(f"{live_server}/orgs/{slug}/usage")
    page.locator("a[data-sort=name]").click()
    page.wait_for_url("**sort=name**")  # a swapped copy, not the page as loaded

    table = page.get_by_test_id("member-table")
    expect(table).to_have_attribute("role", "table")
    expect(table.locator("tbody tr[role=row]")).to_have_count(4)
    expect(table.locator("tbody td:not([role=cell])")).to_have_count(0)
    expect(table.locator("thead th[role=columnheader]")).not_to_have_count(0)
