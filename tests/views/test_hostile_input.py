"""Whatever a client puts in a URL gets a 4xx at worst, never a 5xx, and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]


@pytest.fixture
def admin(session: Session, signed_in: SignIn) -> tuple[FlaskClient, str, int]:
    org = make_org(session, plan="team", seats=2)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org)
    session.commit()
    return signed_in(admin.email), org.slug, member.id


@pytest.mark.parametrize(
    "path",
    [
        "/orgs/{slug}/usage?page=%C2%B2",  # a superscript two: a digit to str.isdigit
        "/orgs/{slug}/usage?page=9223372036854775807",
        "/orgs/{slug}/usage?q=%00",
        "/orgs/{slug}/usage.csv?q=%00",
        "/orgs/ac%00me/usage",
        "/orgs/{slug}/members/99999999999999999999/history",
        "/login?next=/%0D%0ASet-Cookie:%20stolen=1",
        "/orgs/{slug}/usage?period=%F0%9F%92%A5",
    ],
)
def test_each_hostile_url_gets_a_4xx_or_a_safe_page(
    admin: tuple[FlaskClient, str, int], path: str
) -> None:
    client, slug, _ = admin
    response = client.get(path.format(slug=slug))
    assert response.status_code < 500, path
    assert "stolen" not in response.headers.get("Set-Cookie", "")
    assert "\r" not in response.headers.get("Location", "")


TROUBLE = ["\x00", "\r\n", "²", "٣", "-1", "0", "9" * 25, "2026-02-30", "%", "'", "\\", "../"]
"""Characters and values that have broken parsers: NULs, line breaks, digits that are not
ASCII, numbers past 64 bits, impossible dates, quoting."""


def query_value() -> st.SearchStrategy[str]:
    # What a URL can carry: any character but lone surrogates (a client sends
    # bytes; invalid UTF-8 is decoded with replacement characters).
    anything = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
    trouble = st.lists(st.sampled_from(TROUBLE), min_size=1, max_size=3).map("".join)
    return st.one_of(anything, trouble, st.tuples(anything, trouble).map("".join))


PAGES = [
    "/",
    "/login?next={text}",
    "/usage?x={text}",
    "/usage/current?x={text}",
    "/usage/history?x={text}",
    "/orgs/{text}/usage",
    "/orgs/{slug}/usage?period={text}&sort={text}&dir={text}&q={text}&page={text}",
    "/orgs/{slug}/usage.csv?period={text}&sort={text}&dir={text}&q={text}&page={text}",
    "/orgs/{text}/usage.csv",
    "/orgs/{slug}/members/{text}/history",
    "/orgs/{slug}/members/{member}/history?x={text}",
]


def test_no_text_in_any_parameter_of_any_page_gets_a_5xx(
    app: Flask, admin: tuple[FlaskClient, str, int]
) -> None:
    client, slug, member = admin

    @given(page=st.sampled_from(PAGES), text=query_value(), htmx=st.booleans())
    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(page: str, text: str, htmx: bool) -> None:
        url = page.format(slug=slug, member=member, text=quote(text, safe=""))
        headers = {"HX-Request": "true"} if htmx else {}
        response = client.get(url, headers=headers)
        response.get_data()  # a streamed answer fails while it streams, if at all
        assert response.status_code < 500, (url, response.status_code)

    check()
