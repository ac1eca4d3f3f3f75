from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask, g
from flask.testing import FlaskClient

PASSWORD = "correct horse battery"


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf-token" content="([^"]+)"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(
    client: FlaskClient, email: str, password: str = PASSWORD, next_url: str = ""
) -> object:
    page = client.get("/login")
    token = csrf_token(page.get_data(as_text=True))
    path = "/login" + (f"?next={next_url}" if next_url else "")
    return client.post(path, data={"csrf_token": token, "email": email, "password": password})


class IsolatedClient(FlaskClient):
    """A test client whose requests don't share ``g``.

    The test's app context outlives its requests, and Flask reuses it for
    each of them, so Flask-WTF's token and Flask-Login's user cached in ``g``
    would leak from one client's request into another's.
    """

    def open(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        g.__dict__.clear()
        return super().open(*args, **kwargs)


@pytest.fixture(autouse=True)
def isolated_clients(app: Flask) -> None:
    app.test_client_class = IsolatedClient


@pytest.fixture
def signed_in(app: Flask) -> Callable[[str], FlaskClient]:
    """A client signed in as ``email`` (created with PASSWORD)."""

    def make(email: str) -> FlaskClient:
        client = app.test_client()
        response = sign_in(client, email)
        assert response.status_code == 302, response.get_data(as_text=True)[:500]  # type: ignore[attr-defined]
        return client

    return make
