"""The daily chart of the current period: on the dashboard and its poll, an organization's
page and a member's history, with its figures in a table a screen reader can read."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.factories import FrozenClock, make_org, make_user
from tests.usage.test_daily import use
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]
NOV_7 = datetime(2026, 11, 7, tzinfo=UTC)
"""A billing anchor at midnight: periods Nov 7 – Dec 6, Dec 7 – Jan 6, …"""


def text_of(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def table_rows(html: str, table_id: str) -> list[tuple[str, str, str]]:
    """(day, suggestions, running total) of each row of the "Daily figures" table."""
    table = html.split(f'id="{table_id}"', 1)[1].split("</details>", 1)[0]
    return re.findall(
        r'<th scope="row">([^<]+)</th> <td class="num">([^<]+)</td> <td class="num">([^<]+)</td>',
        table,
    )


def chart_name(html: str) -> str:
    match = re.search(r'role="img" aria-label="([^"]+)"[^>]*data-testid="daily-chart"', html)
    assert match, "no daily chart"
    return match.group(1)


def test_the_dashboard_shows_the_period_so_far_day_by_day(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, plan="pro", anchor=NOV_7, password=PASSWORD)
    session.commit()
    use(session, user.id, datetime(2026, 11, 7, 9, tzinfo=UTC), 12)
    use(session, user.id, datetime(2026, 11, 9, 15, tzinfo=UTC), 8)
    clock.now = datetime(2026, 11, 10, 12, tzinfo=UTC)

    html = text_of(signed_in(user.email), "/usage")

    # 20 in 3.5 of 30 days: 172 by the period's end, as "Projected by" says.
    assert chart_name(html) == (
        "Your usage day by day: 20 suggestions so far, 4 days in; projected 172 of 75 by Dec 7"
    )
    assert 'data-testid="projected">172<' in html and "<dt>Projected by Dec 7, 2026</dt>" in html
    assert html.count('<rect class="day') == 4
    assert "<summary>Daily figures</summary>" in html
    assert "<caption>Your usage day by day, Nov 7 – Dec 6, 2026</caption>" in html
    assert '<th scope="col">Day</th>' in html and '<th scope="row">Nov 7, 2026</th>' in html
    assert table_rows(html, "daily-figures") == [
        ("Nov 7, 2026", "12", "12"),
        ("Nov 8, 2026", "0", "12"),
        ("Nov 9, 2026", "8", "20"),
        ("Nov 10, 2026", "0", "20"),
    ]
    assert "Included 75" in html
    assert 'data-testid="projection"' in html and "Projected 172" in html


def test_the_poll_brings_the_chart_with_the_new_usage(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, plan="pro", anchor=NOV_7, password=PASSWORD)
    session.commit()
    clock.now = datetime(2026, 11, 8, 12, tzinfo=UTC)
    client = signed_in(user.email)
    etag = client.get("/usage/current").headers["ETag"]
    use(session, user.id, clock.now, 5)

    poll = client.get("/usage/current", headers={"If-None-Match": etag})

    html = re.sub(r"\s+", " ", poll.get_data(as_text=True))
    assert poll.status_code == 200
    assert table_rows(html, "daily-figures") == [
        ("Nov 7, 2026", "0", "0"),
        ("Nov 8, 2026", "5", "5"),
    ]


def test_a_new_utc_day_changes_the_region_even_without_usage(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    # Anchored at noon, so neither the days left nor (with no usage) the projection
    # change at midnight: only the chart's new day does.
    noon = datetime(2026, 3, 15, 12, tzinfo=UTC)
    user = make_user(session, plan="pro", anchor=noon, password=PASSWORD)
    session.commit()
    clock.now = datetime(2026, 3, 17, 23, 58, tzinfo=UTC)
    client = signed_in(user.email)
    before = client.get("/usage/current")
    etag = before.headers["ETag"]
    clock.advance(timedelta(minutes=1))
    assert client.get("/usage/current", headers={"If-None-Match": etag}).status_code == 304

    clock.advance(timedelta(minutes=2))  # 00:01 on Mar 18
    after = client.get("/usage/current", headers={"If-None-Match": etag})

    assert after.status_code == 200 and after.headers["ETag"] != etag
    html = re.sub(r"\s+", " ", after.get_data(as_text=True))
    assert [row[0] for row in table_rows(html, "daily-figures")][-2:] == [
        "Mar 17, 2026",
        "Mar 18, 2026",
    ]


def test_a_pool_member_sees_the_pool_day_by_day(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    org = make_org(session, plan="team", seats=2, anchor=NOV_7)
    alice = make_user(session, org=org, password=PASSWORD)
    bob = make_user(session, org=org)
    session.commit()
    use(session, alice.id, datetime(2026, 11, 7, 9, tzinfo=UTC), 3)
    use(session, bob.id, datetime(2026, 11, 7, 10, tzinfo=UTC), 4)
    clock.now = datetime(2026, 11, 7, 12, tzinfo=UTC)

    html = text_of(signed_in(alice.email), "/usage")

    assert chart_name(html).startswith(
        f"The {org.name} pool day by day: 7 suggestions so far, 1 day in; projected "
    )
    assert table_rows(html, "daily-figures") == [("Nov 7, 2026", "7", "7")]


def test_admins_see_the_pool_day_by_day_and_a_past_period_projects_nothing(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    org = make_org(session, plan="team", seats=2, anchor=NOV_7)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org)
    session.commit()
    use(session, member.id, datetime(2026, 11, 30, 9, tzinfo=UTC), 60)
    use(session, admin.id, datetime(2026, 12, 8, 9, tzinfo=UTC), 10)
    clock.now = datetime(2026, 12, 9, 12, tzinfo=UTC)
    client = signed_in(admin.email)

    current = text_of(client, f"/orgs/{org.slug}/usage")
    past = text_of(client, f"/orgs/{org.slug}/usage?period=2026-11-07")

    assert chart_name(current).startswith(
        f"The {org.name} pool day by day: 10 suggestions so far, 3 days in; projected "
    )
    assert table_rows(current, "pool-daily-figures") == [
        ("Dec 7, 2026", "0", "0"),
        ("Dec 8, 2026", "10", "10"),
        ("Dec 9, 2026", "0", "10"),
    ]
    assert 'data-testid="projection"' in current and "Included 100" in current
    assert (
        chart_name(past)
        == f"The {org.name} pool day by day: 60 suggestions in 30 days, of 100 included"
    )
    rows = table_rows(past, "pool-daily-figures")
    assert len(rows) == 30 and rows[23] == ("Nov 30, 2026", "60", "60") and rows[-1][2] == "60"
    assert 'data-testid="projection"' not in past and "Projected" not in past


def test_a_members_history_shows_their_part_day_by_day_against_one_seat(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    org = make_org(session, plan="team", seats=3, anchor=NOV_7)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    ada = make_user(session, org=org, name="Ada Lovelace")
    session.commit()
    use(session, ada.id, datetime(2026, 11, 8, 9, tzinfo=UTC), 6)
    use(session, admin.id, datetime(2026, 11, 8, 10, tzinfo=UTC), 30)
    clock.now = datetime(2026, 11, 9, 12, tzinfo=UTC)

    html = text_of(signed_in(admin.email), f"/orgs/{org.slug}/members/{ada.id}/history")

    assert chart_name(html).startswith("Ada Lovelace day by day: 6 suggestions so far, 3 days in;")
    assert chart_name(html).endswith(" of 50 by Dec 7")
    assert table_rows(html, "member-daily-figures") == [
        ("Nov 7, 2026", "0", "0"),
        ("Nov 8, 2026", "6", "6"),
        ("Nov 9, 2026", "0", "6"),
    ]
    assert "Included 50" in html  # one seat's allowance, as the member's levels


def test_days_past_the_included_amount_say_what_happens_next(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    pro = make_user(session, plan="pro", anchor=NOV_7, password=PASSWORD)
    free = make_user(session, password=PASSWORD)  # 5 a calendar month, then paused
    session.commit()
    use(session, pro.id, datetime(2026, 11, 7, 9, tzinfo=UTC), 70)
    use(session, pro.id, datetime(2026, 11, 8, 9, tzinfo=UTC), 10)
    use(session, free.id, datetime(2026, 11, 2, 9, tzinfo=UTC), 5)
    clock.now = datetime(2026, 11, 8, 12, tzinfo=UTC)

    billed = text_of(signed_in(pro.email), "/usage")
    paused = text_of(signed_in(free.email), "/usage")

    # Nov 7 is at 93 % (a warning); Nov 8 past 100 %, billed on a paid plan.
    assert re.findall(r'<rect class="day level-(\w+)"', billed) == ["warning", "over"]
    assert "Running total, Over the limit · billed at €0.30 each" in billed
    assert re.findall(r'<rect class="day level-(\w+)"', paused)[1:] == ["paused"] * 7
    assert "Running total, Paused until Dec 1, 2026" in paused
