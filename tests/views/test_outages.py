"""The database down: every answer is a 503 that says so, drawn without the database, and the
portal recovers by itself."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal import clock
from portal.apikeys import create_api_key
from tests.factories import make_user
from tests.outage import database_down
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]


def test_pages_polls_and_the_api_say_the_database_is_down_then_recover(
    app: Flask, session: Session, signed_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    _, key = create_api_key(session, "backend", clock.now())
    session.commit()
    email = user.email
    browser = signed_in(email)
    api = app.test_client()
    bearer = {"Authorization": f"Bearer {key}"}
    assert browser.get("/usage").status_code == 200
    session.close()

    with database_down(app, monkeypatch):
        page = browser.get("/usage")
        html = page.get_data(as_text=True)
        assert page.status_code == 503 and int(page.headers["Retry-After"]) > 0
        assert "cannot reach its database" in html and "AI suggestions" in html
        assert "Signed in as" not in html  # drawn without reading the user
        assert page.headers["Content-Security-Policy"] and page.headers["X-Frame-Options"]

        poll = browser.get("/usage/current", headers={"HX-Request": "true"})
        fragment = poll.get_data(as_text=True)
        assert poll.status_code == 503 and "<html" not in fragment
        assert "data-reason>The portal cannot reach its database" in fragment
        assert 'hx-trigger="every 10s' in fragment

        refused = api.get(f"/api/v1/users/{email}/usage", headers=bearer)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert json.loads(refused.data)["error"]["code"] == "database_unavailable"
        signing_in = app.test_client().get("/login")
        assert signing_in.status_code == 200  # the form needs no database

    assert browser.get("/usage").status_code == 200
    assert api.get(f"/api/v1/users/{email}/usage", headers=bearer).status_code == 200
