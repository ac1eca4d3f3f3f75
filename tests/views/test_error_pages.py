"""Error pages: a title a person can read, and a way forward."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.config import load_config
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


def test_too_many_requests_says_how_long_to_wait_and_offers_to_try_again(
    database_url: str,
) -> None:
    from portal import create_app

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_url,
            "TESTING": True,
            **{k: v for k, v in load_config({}, "instance").items() if k == "PORT"},
        }
    )
    client = app.test_client()
    answers = [client.get("/api/v1/users/x@example.com/usage") for _ in range(31)]
    assert answers[-1].status_code == 429  # the API's JSON 429 stays as it is
    assert answers[-1].is_json


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
