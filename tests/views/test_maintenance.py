"""Maintenance mode: every URL answers 503 with Retry-After, in the client's format, and
nothing is recorded meanwhile."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock, create_app
from portal.apikeys import create_api_key
from portal.config import load_config
from portal.extensions import db
from portal.models import UsageEvent
from tests.conftest import _empty_tables
from tests.factories import make_user
from tests.views.conftest import PASSWORD, sign_in


@pytest.fixture
def maintained(database_url: str) -> Iterator[Flask]:
    """The portal started with PORTAL_MAINTENANCE=1 on the test database."""
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True, "PORTAL_MAINTENANCE": True}
    )
    with app.app_context():
        yield app
        db.session.remove()
        _empty_tables()
        db.engine.dispose()


def test_the_setting_is_read_from_the_environment(tmp_path: object) -> None:
    url = "postgresql://portal@db.example/portal"
    assert load_config({"PORTAL_MAINTENANCE": "1", "DATABASE_URL": url}, str(tmp_path))[
        "PORTAL_MAINTENANCE"
    ]
    assert not load_config({"DATABASE_URL": url}, str(tmp_path))["PORTAL_MAINTENANCE"]


def test_pages_get_a_branded_503_with_retry_after(maintained: Flask) -> None:
    client = maintained.test_client()
    for path in ("/login", "/usage", "/usage/history", "/orgs/acme/usage", "/nope"):
        page = client.get(path)
        assert page.status_code == 503, path
        assert int(page.headers["Retry-After"]) > 0
        assert page.headers["Content-Security-Policy"]
    html = client.get("/usage").get_data(as_text=True)
    assert "down for maintenance" in html and "AI suggestions</strong>" in html  # the site's layout
    # What the branded page needs still loads, and load balancers still see a
    # live server, so they go on sending users to the branded page.
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_poll_gets_a_fragment_that_keeps_polling(maintained: Flask) -> None:
    poll = maintained.test_client().get("/usage/current", headers={"HX-Request": "true"})
    fragment = poll.get_data(as_text=True)
    assert poll.status_code == 503 and int(poll.headers["Retry-After"]) > 0
    assert fragment.lstrip().startswith("<section") and "<html" not in fragment
    assert 'hx-get="/usage/current"' in fragment and 'hx-trigger="every 10s' in fragment
    assert "down for maintenance" in fragment


def test_the_api_answers_its_json_error_and_records_nothing(maintained: Flask) -> None:
    session = db.session()
    user = make_user(session, plan="pro", password=PASSWORD)
    _, key = create_api_key(session, "backend", clock.now())
    session.commit()
    client = maintained.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    event = {"user_email": user.email, "idempotency_key": "during-maintenance"}
    answers = [
        client.post("/api/v1/usage-events", json=event, headers=headers),
        client.post("/api/v1/usage-events/batch", json={"events": [event]}, headers=headers),
        client.get(f"/api/v1/users/{user.email}/usage", headers=headers),
        client.get("/api/v1/openapi.json"),
    ]
    for answer in answers:
        assert answer.status_code == 503
        assert int(answer.headers["Retry-After"]) > 0
        assert json.loads(answer.data)["error"]["code"] == "maintenance"
    assert session.scalar(select(func.count()).select_from(UsageEvent)) == 0


def test_a_signed_in_user_sees_the_portal_again_after_maintenance(
    app: Flask, session: Session, signed_in: Callable[[str], FlaskClient]
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    app.config["PORTAL_MAINTENANCE"] = True
    during = client.get("/usage")
    assert during.status_code == 503
    assert "Signed in as" not in during.get_data(as_text=True)  # the user is not read
    app.config["PORTAL_MAINTENANCE"] = False
    assert client.get("/usage").status_code == 200
    assert sign_in(app.test_client(), user.email).status_code == 302
