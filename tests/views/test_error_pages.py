"""Error pages: a title a person can read, and a way forward."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]


def heading(html: str) -> str:
    found = re.search(r"<h1>([^<]+)</h1>", html)
    assert found, html
    return found.group(1)


def ways_forward(html: str) -> list[str]:
    block = re.search(r'<ul class="ways-forward">(.*?)</ul>', html, re.S)
    assert block, html
    return re.findall(r">([^<]+)</a>", block.group(1))


def test_a_page_that_does_not_exist_is_named_and_leads_back(
    session: Session, signed_in: SignIn, app: Flask
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    missing = signed_in(user.email).get("/no/such/page")
    html = missing.get_data(as_text=True)
    assert missing.status_code == 404
    assert heading(html) == "Page not found"
    assert "<title>Page not found · AI suggestions</title>" in html
    assert ways_forward(html) == ["Back to your usage"]

    stranger = app.test_client().get("/no/such/page").get_data(as_text=True)
    assert ways_forward(stranger) == ["Sign in"]


def test_a_member_on_the_admins_page_is_told_it_is_not_theirs(
    session: Session, signed_in: SignIn
) -> None:
    org = make_org(session)
    member = make_user(session, org=org, password=PASSWORD)
    session.commit()
    forbidden = signed_in(member.email).get(f"/orgs/{org.slug}/usage")
    html = forbidden.get_data(as_text=True)
    assert forbidden.status_code == 403
    assert heading(html) == "Not for you to see"
    assert "Error 403" in html and ways_forward(html) == ["Back to your usage"]


def test_a_failure_that_may_pass_says_how_long_to_wait_and_offers_to_try_again(
    app: Flask,
) -> None:
    app.config["PORTAL_MAINTENANCE"] = True
    client = app.test_client()
    answer = client.get("/usage/history?period=2")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 503
    assert heading(html) == "Back in a moment"
    assert 'data-testid="retry-after">Try again in 120 seconds.' in html
    assert ways_forward(html) == ["Try again"]  # signing in needs the database
    assert 'href="/usage/history?period=2">Try again' in html


def test_try_again_never_leads_to_another_site(app: Flask) -> None:
    app.config["PORTAL_MAINTENANCE"] = True
    client = app.test_client()
    # Decoded, this path is "/\evil.example/phish", which a browser reads as
    # "//evil.example/phish": another site.
    html = client.get("/%5Cevil.example/phish").get_data(as_text=True)
    assert "evil.example" not in html
    assert ways_forward(html) == []


def test_the_sign_in_form_stays_after_too_many_attempts_with_the_wait(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    for _ in range(6):
        answer = client.post(
            "/login",
            data={"csrf_token": token.group(1), "email": "ada@example.com", "password": "wrong"},
        )
    html = answer.get_data(as_text=True)
    assert answer.status_code == 429
    assert re.search(r"Wait \d+ seconds, then try again\.", html)
    assert 'id="password"' in html and "Sign in</button>" in html
