"""The polled live region (``/usage/current``) and the signed-in user behind every page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import jinja2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, event
from sqlalchemy.orm import Session

from portal import clock
from portal.extensions import db
from portal.models import User
from portal.usage import check_usage, record_usage
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]


def use(session: Session, user_id: int, quantity: int) -> None:
    at = clock.now()
    record_usage(
        session, user_id, idempotency_key=f"{user_id}-{at}-{quantity}", now=at, quantity=quantity
    )
    session.commit()


def test_live_region_shows_the_numbers_check_usage_gives(
    session: Session, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, anchor=clock.now() - timedelta(days=3))
    alice = make_user(session, org=org, password=PASSWORD)
    bob = make_user(session, org=org)
    session.commit()
    use(session, alice.id, 30)
    use(session, bob.id, 42)
    expected = check_usage(session, alice.id, clock.now()).as_dict()

    html = re.sub(r"\s+", " ", signed_in(alice.email).get("/usage/current").get_data(as_text=True))

    assert f'<strong data-testid="used">{expected["used"]}</strong> of 100' in html
    assert expected["used"] == 72 and expected["member_used"] == 30
    assert f'<span data-testid="percent">{expected["percent"]}</span>%' in html
    assert f'<span data-testid="remaining">{expected["remaining"]}</span> remaining' in html
    assert f"Your share of the pool: <strong>{expected['member_used']}</strong>" in html
    assert f'data-testid="projected">{expected["projected_used"]:,}<' in html


def test_unchanged_region_answers_304_without_rendering(
    session: Session, signed_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    etag = client.get("/usage/current").headers["ETag"]
    rendered: list[str] = []
    render = jinja2.Template.render

    def record(template: jinja2.Template, *args: Any, **kwargs: Any) -> str:
        rendered.append(str(template.name))
        return render(template, *args, **kwargs)

    monkeypatch.setattr(jinja2.Template, "render", record)
    again = client.get("/usage/current", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and rendered == []
    assert again.headers["ETag"] == etag and again.headers["Cache-Control"] == "private, no-cache"
    assert again.headers["Content-Security-Policy"]  # security headers on every answer
    use(session, user.id, 1)
    changed = client.get("/usage/current", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_the_poll_interval_is_a_setting(app: Flask, session: Session, signed_in: SignIn) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    app.config["POLL_SECONDS"] = 2
    region = signed_in(user.email).get("/usage/current").get_data(as_text=True)
    assert 'hx-trigger="every 2s' in region


def test_pages_show_the_signed_in_email(session: Session, signed_in: SignIn) -> None:
    user = make_user(session, email="grace@example.com", password=PASSWORD)
    session.commit()
    html = signed_in(user.email).get("/usage/history").get_data(as_text=True)
    assert "Signed in as grace@example.com" in html


def test_deleted_account_is_signed_out_on_its_next_request(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, email="gone@example.com", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    assert client.get("/usage/current").status_code == 200

    session.execute(delete(User).where(User.id == user.id))
    session.commit()

    poll = client.get("/usage/current", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"
    assert b"<section" not in poll.data
    for path in ("/usage", "/usage/history"):
        page = client.get(path)
        assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=")


@contextmanager
def statements_sent() -> Iterator[list[str]]:
    """Every statement sent to the database meanwhile."""
    seen: list[str] = []

    def before(*args: Any) -> None:
        seen.append(args[2])

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def test_a_poll_reads_the_user_then_the_usage_and_only_a_fresh_region_reads_the_days(
    session: Session, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2)
    user = make_user(session, org=org, password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    etag = client.get("/usage/current").headers["ETag"]

    with statements_sent() as fresh:
        assert client.get("/usage/current").status_code == 200
    with statements_sent() as unchanged:
        assert client.get("/usage/current", headers={"If-None-Match": etag}).status_code == 304
    # The user loader checks the session (it may have ended), then the
    # view reads plan and usage in one statement; none opens a transaction.
    # Only a region drawn anew reads the days of its chart: a 304 needs none.
    for sent in (fresh, unchanged):
        assert "FROM user_sessions" in sent[0] and "usage_records" in sent[1]
    assert len(unchanged) == 2, unchanged
    assert len(fresh) == 3 and "FROM usage_events" in fresh[2], fresh


@pytest.mark.parametrize("case", ["no cookie", "forged cookie", "HEAD"])
def test_polls_without_a_valid_session_are_signed_out(
    session: Session, signed_in: SignIn, case: str
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    cookie = client.get_cookie("session")
    assert cookie is not None
    method = "GET"
    if case == "no cookie":
        client.delete_cookie("session")
    elif case == "forged cookie":
        client.set_cookie(
            "session", cookie.value[:-2] + ("AA" if cookie.value[-2:] != "AA" else "BB")
        )
    else:
        method = "HEAD"
    poll = client.open("/usage/current", method=method, headers={"HX-Request": "true"})
    if case == "HEAD":
        assert poll.status_code == 200 and poll.data == b""
    else:
        assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"


def test_a_secret_key_rotated_at_run_time_signs_old_sessions_out(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    assert client.get("/usage/current").status_code == 200
    app.config["SECRET_KEY"] = "a new secret key, the old one leaked"
    poll = client.get("/usage/current", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"


def test_an_expired_session_cookie_is_signed_out(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    app.permanent_session_lifetime = timedelta(seconds=-1)
    poll = client.get("/usage/current", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"
