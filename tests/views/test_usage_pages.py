from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal import clock
from portal.usage import record_usage
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]


def now() -> datetime:
    return clock.now()


def use(session: Session, user_id: int, quantity: int) -> None:
    record_usage(
        session,
        user_id,
        idempotency_key=f"{user_id}-{quantity}-{now()}",
        now=now(),
        quantity=quantity,
    )
    session.commit()


def text(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def squash(html: str) -> str:
    return re.sub(r"\s+", " ", html)


@pytest.mark.parametrize(
    ("plan", "used", "level", "badge", "alert"),
    [
        ("starter", 10, "ok", "OK", None),
        ("starter", 21, "warning", "Warning", "You've used 84.0% of your suggestions"),
        ("starter", 24, "critical", "Critical", "Only 1 suggestion remaining"),
        ("free", 5, "paused", "Paused until ", "Monthly limit reached"),
        ("starter", 30, "over", "Over the limit · billed at €0.35 each", "You're 5 over the 25"),
    ],
)
def test_dashboard_shows_the_bar_the_figures_and_the_alert_for_each_level(
    session: Session,
    signed_in: SignIn,
    plan: str,
    used: int,
    level: str,
    badge: str,
    alert: str | None,
) -> None:
    """At 100 % a blocked free plan and a billed paid plan must not look alike."""
    user = make_user(session, plan=plan, password=PASSWORD, anchor=now() - timedelta(days=5))
    use(session, user.id, used)
    html = squash(text(signed_in(user.email), "/usage"))
    included = 5 if plan == "free" else 25
    assert f'<strong data-testid="used">{used}</strong> of {included} suggestions used' in html
    assert f'class="usage-bar level-{level}"' in html
    assert f'<span class="level-badge level-{level}" data-testid="level">{badge}' in html
    assert f'value="{min(used, included)}" max="{included}"' in html
    assert 'aria-valuetext="' in html  # a real progress bar to screen readers
    if alert:
        assert alert in html
    else:
        assert 'data-testid="alert"' not in html
    if plan == "free":
        assert "Upgrade to Starter" in html and "Estimated overage cost" not in html
    else:
        assert "Estimated overage cost" in html
        cost = "€1.75" if used == 30 else "€0.00"
        assert f'data-testid="overage-cost">{cost}' in html


def test_dashboard_names_period_reset_and_projection(session: Session, signed_in: SignIn) -> None:
    anchor = now() - timedelta(days=10)
    user = make_user(session, plan="pro", password=PASSWORD, anchor=anchor)
    use(session, user.id, 20)
    html = squash(text(signed_in(user.email), "/usage"))
    end = (
        anchor.replace(month=anchor.month % 12 + 1)
        if anchor.month < 12
        else anchor.replace(year=anchor.year + 1, month=1)
    )
    assert f"Resets on <strong>{end:%b} {end.day}, {end.year}</strong>" in html
    assert "Projected by" in html and "Pro plan" in html


def test_member_sees_the_pool_and_their_own_share(session: Session, signed_in: SignIn) -> None:
    org = make_org(session, plan="team", seats=2, anchor=now() - timedelta(days=3))
    alice = make_user(session, org=org, password=PASSWORD)
    bob = make_user(session, org=org)
    use(session, alice.id, 30)
    use(session, bob.id, 50)
    html = squash(text(signed_in(alice.email), "/usage"))
    assert '<strong data-testid="used">80</strong> of 100' in html
    assert "Your share of the pool: <strong>30</strong>" in html


def test_live_region_is_served_alone_and_answers_304_when_unchanged(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD, anchor=now() - timedelta(days=1))
    session.commit()
    client = signed_in(user.email)
    first = client.get("/usage/current", headers={"HX-Request": "true"})
    body = first.get_data(as_text=True)
    assert first.status_code == 200 and body.lstrip().startswith('<section id="current-usage"')
    assert "<html" not in body and 'hx-trigger="every 10s' in body
    etag = first.headers["ETag"]
    again = client.get("/usage/current", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    use(session, user.id, 1)
    changed = client.get("/usage/current", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert '<strong data-testid="used">1</strong>' in changed.get_data(as_text=True)


def test_history_lists_twelve_periods_with_chart_and_table(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, plan="starter", password=PASSWORD, anchor=now() - timedelta(days=2))
    use(session, user.id, 30)
    html = squash(text(signed_in(user.email), "/usage/history"))
    rows = re.findall(r"<tr(?: aria-current=\"true\")?> <th scope=\"row\">([^<]+)<", html)
    assert len(rows) == 12
    assert '<svg viewBox="0 0 400 240" role="img"' in html
    assert '<title id="chart-title">' in html and '<desc id="chart-desc">' in html
    assert html.count('class="limit"') == 12
    first_row = html.split('aria-current="true"', 1)[1]
    assert (
        '<td class="num" data-label="Used" data-testid="used">30</td> '
        '<td class="num" data-label="Included">25</td>'
    ) in first_row
    assert "€1.75" in first_row
    # By its last day: Mar 16, 12:00 until Apr 16, 12:00 is "Mar 16 – Apr 15".
    assert now() == datetime(2026, 3, 18, 12, 0, tzinfo=UTC)
    assert [rows[0].strip(), rows[-1].strip()] == ["Mar 16 – Apr 15, 2026", "Apr 16 – May 15, 2025"]
    assert 'data-testid="yours"' not in html  # an individual's history has no "yours" column


def test_pages_render_assets_from_versioned_local_urls(session: Session, signed_in: SignIn) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    html = text(client, "/usage")
    assert "/static/vendor/htmx-2.0.11/htmx.min.js" in html
    assert "/static/vendor/pico-2.1.1/pico.min.css" in html
    assert re.search(r"/static/app\.css\?v=[0-9a-f]{12}", html)
    assert "http://" not in html.split("<body")[0] and "https://" not in html.split("<body")[0]
    asset = client.get("/static/vendor/htmx-2.0.11/htmx.min.js")
    assert asset.status_code == 200 and "max-age=31536000" in asset.headers["Cache-Control"]


def test_error_pages_use_the_site_layout_and_htmx_gets_a_fragment(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    client = signed_in(user.email)
    page = client.get("/no-such-page")
    assert page.status_code == 404 and "There is nothing here." in page.get_data(as_text=True)
    assert "<nav" in page.get_data(as_text=True)
    fragment = client.get("/no-such-page", headers={"HX-Request": "true"})
    assert fragment.status_code == 404 and b"<nav" not in fragment.data


def test_history_chart_has_round_ticks_years_a_named_limit_and_a_legend_for_each_colour(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD, anchor=now() - timedelta(days=2))
    use(session, user.id, 80)  # over the 75 included: the "exceeded" colour
    html = squash(text(signed_in(user.email), "/usage/history"))

    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', html)
    assert ticks == ["0", "20", "40", "60", "80"]
    # Apr 2025 … Mar 2026: the year under the first month and under January.
    years = re.findall(r'<text class="year"[^>]*>(\d+)</text>', html)
    assert years == ["2025", "2026"]
    months = re.findall(r'<text class="month"[^>]*>(\w+)</text>', html)
    assert months[0] == "Apr" and months[-1] == "Mar" and len(months) == 12
    assert re.findall(r'<text class="limit-label"[^>]*>([^<]+)</text>', html) == ["Included 75"]
    legend = html.split('data-testid="chart-legend">')[1].split("</figcaption>")[0]
    assert "Used, OK" in legend and "Used, Exceeded" in legend and "Included" in legend
    assert "Used, Warning" not in legend  # only colours the bars use


def test_a_team_members_history_shows_their_own_part_and_the_pool(
    session: Session, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, anchor=now() - timedelta(days=3))
    alice = make_user(session, org=org, password=PASSWORD)
    bob = make_user(session, org=org, password=PASSWORD)
    use(session, alice.id, 30)
    use(session, bob.id, 80)  # the pool: 110 of 100
    html = squash(text(signed_in(alice.email), "/usage/history"))

    current = html.split('aria-current="true"', 1)[1].split("</tr>")[0]
    assert '<td class="num" data-label="Yours" data-testid="yours">30</td>' in current
    assert '<td class="num" data-label="Pool used" data-testid="used">110</td>' in current
    assert ">€2.50</td>" in current  # the organization's overage: 10 × €0.25, its admins pay
    assert f"pooled for {org.name}" in html
    assert html.count('class="part"') == 12 and "Your part" in html
