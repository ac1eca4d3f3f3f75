from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal import clock
from portal.models import Organization, User
from portal.usage import organization_period, record_usage
from tests.factories import FrozenClock, make_org, make_user
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]


def now() -> datetime:
    return clock.now()


def team(session: Session, usage: list[int]) -> tuple[Organization, User, list[User]]:
    """An org (seat allowance 50) with an admin and members who used ``usage``."""
    org = make_org(session, plan="team", seats=len(usage) + 1, anchor=now() - timedelta(days=4))
    admin = make_user(
        session,
        org=org,
        role="admin",
        password=PASSWORD,
        name="Zed Admin",
        email=f"admin@{org.slug}.example",
    )
    members = []
    for n, used in enumerate(usage):
        member = make_user(
            session,
            org=org,
            password=PASSWORD,
            name=f"Member {n:02d}",
            email=f"m{n:02d}@{org.slug}.example",
        )
        members.append(member)
        if used:
            record_usage(
                session, member.id, idempotency_key=f"{org.slug}-{n}", now=now(), quantity=used
            )
    session.commit()
    return org, admin, members


def member_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-member="([^"]+)">', html)


def test_admin_sees_pool_totals_over_all_members(session: Session, signed_in: SignIn) -> None:
    usage = [n * 2 for n in range(30)]  # 30 members: more than one page and than a top 10
    org, admin, _ = team(session, usage)
    html = signed_in(admin.email).get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert f'data-testid="member-count">{31}' in html
    assert f'data-testid="members-used">{sum(usage)}' in html
    assert 'data-testid="average">28.1' in html  # 870 / 31
    assert len(member_rows(html)) == 25 and "Page 1 of 2" in html
    assert member_rows(html)[0].startswith("m29@")  # most used first


def test_member_table_sorts_filters_and_pages_with_the_state_in_the_url(
    session: Session, signed_in: SignIn
) -> None:
    org, admin, _ = team(session, [5, 0, 12, 7])
    client = signed_in(admin.email)
    base = f"/orgs/{org.slug}/usage"
    by_name = client.get(f"{base}?sort=name&dir=asc").get_data(as_text=True)
    assert member_rows(by_name)[:2] == [f"m00@{org.slug}.example", f"m01@{org.slug}.example"]
    assert 'aria-sort="ascending"' in by_name
    by_use = client.get(f"{base}?sort=used&dir=asc").get_data(as_text=True)
    assert [r[:3] for r in member_rows(by_use)] == ["adm", "m01", "m00", "m03", "m02"]
    filtered = client.get(f"{base}?q=M02", headers={"HX-Request": "true"})
    body = filtered.get_data(as_text=True)
    assert body.lstrip().startswith('<div id="members"') and "<html" not in body
    assert member_rows(body) == [f"m02@{org.slug}.example"]
    assert "1 of 5 members match" in body
    assert 'hx-swap-oob="true"' in body  # the filter form learns the current sort
    # Without JavaScript the same URL is a full page.
    assert "<html" in client.get(f"{base}?q=M02").get_data(as_text=True)
    # Restoring history after the back button also gets the full page.
    restore = client.get(
        f"{base}?q=M02", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert "<html" in restore.get_data(as_text=True)


def test_pagination_links_keep_sort_and_filter(session: Session, signed_in: SignIn) -> None:
    org, admin, _ = team(session, list(range(30)))
    html = signed_in(admin.email).get(f"/orgs/{org.slug}/usage?sort=name&dir=asc&q=member")
    page = html.get_data(as_text=True)
    assert "30 of 31 members match" in page
    next_link = re.search(r'href="([^"]+)"[^>]*rel="next"', page)
    assert next_link is not None
    link = next_link.group(1).replace("&amp;", "&")
    assert "sort=name" in link and "dir=asc" in link and "q=member" in link and "page=2" in link
    second = signed_in(admin.email).get(link).get_data(as_text=True)
    assert len(member_rows(second)) == 5


def test_csv_export_has_every_member_quoted_and_a_named_file(
    session: Session, signed_in: SignIn
) -> None:
    org, admin, members = team(session, [3] * 30)
    members[0].display_name = 'Doe, "Jane"'
    members[1].display_name = "=HYPERLINK(1)"
    session.commit()
    response = signed_in(admin.email).get(f"/orgs/{org.slug}/usage.csv")
    period = organization_period(org, now())
    assert response.mimetype == "text/csv"
    assert (
        f'filename="{org.slug}-usage-{period.start:%Y-%m-%d}-to-{period.last_day:%Y-%m-%d}.csv"'
        in response.headers["Content-Disposition"]
    )
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:4] == ["name", "email", "role", "used"]
    assert len(rows) == 32  # header + admin + 30 members
    names = {row[0] for row in rows[1:]}
    assert 'Doe, "Jane"' in names and "'=HYPERLINK(1)" in names


def test_period_picker_shows_past_periods(session: Session, signed_in: SignIn) -> None:
    org, admin, _ = team(session, [9])
    client = signed_in(admin.email)
    previous = organization_period(org, now()).previous()
    html = client.get(f"/orgs/{org.slug}/usage?period={previous.start.date()}").get_data(
        as_text=True
    )
    assert 'data-testid="members-used">0' in html
    assert html.count("<option") == 12


def test_member_history_is_linked_from_the_table(session: Session, signed_in: SignIn) -> None:
    org, admin, members = team(session, [17])
    client = signed_in(admin.email)
    html = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    link = f"/orgs/{org.slug}/members/{members[0].id}/history"
    assert link in html
    history = client.get(link).get_data(as_text=True)
    assert "Member 00" in history and '<td class="num" data-label="Used">17</td>' in history


# Who may see what, tried the way an attacker would.


def test_members_get_403_and_strangers_404_for_every_org_url(
    session: Session, signed_in: SignIn
) -> None:
    org, admin, members = team(session, [1])
    other, other_admin, other_members = team(session, [2])
    stranger = make_user(session, password=PASSWORD)
    session.commit()
    urls = [
        f"/orgs/{org.slug}/usage",
        f"/orgs/{org.slug}/usage?q=m",
        f"/orgs/{org.slug}/usage.csv",
        f"/orgs/{org.slug}/members/{members[0].id}/history",
    ]
    member_client = signed_in(members[0].email)
    stranger_client = signed_in(stranger.email)
    other_admin_client = signed_in(other_admin.email)
    for url in urls:
        assert member_client.get(url).status_code == 403, url
        assert stranger_client.get(url).status_code == 404, url
        assert other_admin_client.get(url).status_code == 404, url
    assert stranger_client.get("/orgs/no-such-org/usage").status_code == 404


def test_admin_cannot_read_other_orgs_members_by_editing_ids(
    session: Session, signed_in: SignIn
) -> None:
    org, admin, _ = team(session, [1])
    other, _, other_members = team(session, [2])
    client = signed_in(admin.email)
    assert client.get(f"/orgs/{org.slug}/members/{other_members[0].id}/history").status_code == 404
    assert client.get(f"/orgs/{org.slug}/members/999999/history").status_code == 404


@pytest.mark.parametrize("period", ["2001-01-01", "yesterday", "9999-12-31", "../etc"])
def test_edited_periods_are_not_found(session: Session, signed_in: SignIn, period: str) -> None:
    org, admin, _ = team(session, [1])
    response = signed_in(admin.email).get(f"/orgs/{org.slug}/usage?period={period}")
    assert response.status_code == 404
    response = signed_in(admin.email).get(f"/orgs/{org.slug}/usage.csv?period={period}")
    assert response.status_code == 404


def test_navigation_lists_only_administered_orgs(session: Session, signed_in: SignIn) -> None:
    org, admin, members = team(session, [1])
    link = f'<a href="/orgs/{org.slug}/usage" >{org.name}</a>'
    admins_page = signed_in(admin.email).get("/usage").get_data(as_text=True)
    members_page = signed_in(members[0].email).get("/usage").get_data(as_text=True)
    assert link in admins_page and link not in members_page
    # Both read the pool by the organization's name, never its slug.
    assert f"pooled for {org.name}" in admins_page and f"pooled for {org.name}" in members_page
    assert f"pooled for {org.slug}" not in members_page


def test_download_csv_exports_the_filtered_table_and_export_all_every_member(
    session: Session, signed_in: SignIn
) -> None:
    org, admin, _ = team(session, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    browser = signed_in(admin.email)
    page = browser.get(f"/orgs/{org.slug}/usage?q=member 1").get_data(as_text=True)
    shown = re.search(r'href="([^"]+)" download data-testid="export-shown">([^<]+)<', page)
    every = re.search(r'href="([^"]+)" download data-testid="export-all">([^<]+)<', page)
    assert shown and every
    assert shown.group(2) == "Download CSV of these 2"  # Member 10 and Member 11
    assert every.group(2) == "Export all members"

    def emails(link: str) -> list[str]:
        body = browser.get(link.replace("&amp;", "&")).get_data(as_text=True)
        return [row[1] for row in list(csv.reader(io.StringIO(body)))[1:]]

    assert sorted(emails(shown.group(1))) == [f"m{n:02d}@{org.slug}.example" for n in (10, 11)]
    assert len(emails(every.group(1))) == 13
    unfiltered = browser.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert 'data-testid="export-shown"' not in unfiltered
    assert re.search(r'data-testid="export-all">Download CSV<', unfiltered)


def test_the_table_reads_as_people_expect(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    """Relative last activity with the exact time at hand, share bars told apart, every column
    sortable, whole-second times in the CSV."""
    org, admin, members = team(session, [5, 0, 20])
    clock.advance(timedelta(hours=2, minutes=10))
    client = signed_in(admin.email)
    html = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)

    busiest = html.split(f'data-member="{members[2].email}"')[1].split("</tr>")[0]
    assert (
        '<time datetime="2026-03-18T12:00:00Z" title="Mar 18, 2026, 12:00 UTC">2 hours ago</time>'
        in busiest
    )
    assert "No use this period" in html.split(f'data-member="{members[1].email}"')[1]
    # Bars are scaled to the busiest member (20 fills its bar); the text keeps the share of
    # the pool (4 seats of 50).
    assert 'value="20" max="20"' in busiest and 'data-testid="share">10.0%' in busiest
    quiet = html.split(f'data-member="{members[0].email}"')[1].split("</tr>")[0]
    assert 'value="5" max="20"' in quiet and 'data-testid="share">2.5%' in quiet
    for column in ("share", "level"):
        assert f'data-sort="{column}"' in html
        ascending = client.get(f"/orgs/{org.slug}/usage?sort={column}&dir=asc")
        order = [row[:3] for row in member_rows(ascending.get_data(as_text=True))]
        assert order[-2:] == ["m00", "m02"], column
        assert 'aria-sort="ascending"' in ascending.get_data(as_text=True)
    # A column's header link and the bare address agree: the latest activity first.
    header = re.search(r'href="([^"]+)"[^>]*data-sort="last_activity"', html)
    assert header and "dir=desc" in header.group(1)
    latest = client.get(f"/orgs/{org.slug}/usage?sort=last_activity").get_data(as_text=True)
    assert 'aria-sort="descending"' in latest
    assert [row[:3] for row in member_rows(latest)][-1] == "m01"  # no use this period

    rows = list(csv.reader(io.StringIO(client.get(f"/orgs/{org.slug}/usage.csv").get_data(True))))
    last_activity = {row[1]: row[6] for row in rows[1:]}
    assert last_activity[members[2].email] == "2026-03-18T12:00:00Z"
    assert last_activity[members[1].email] == ""


def test_an_org_with_more_members_than_seats_says_so(session: Session, signed_in: SignIn) -> None:
    org, admin, _ = team(session, [1, 1])  # 3 members on 3 seats
    page = signed_in(admin.email).get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert 'data-testid="over-seats"' not in page
    org.seats = 2
    session.commit()
    page = re.sub(r"\s+", " ", signed_in(admin.email).get(f"/orgs/{org.slug}/usage").get_data(True))
    assert "<strong>3 members on 2 seats.</strong>" in page
    assert "does not grow with the extra members" in page
