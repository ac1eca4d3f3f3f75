from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal import clock
from portal.apikeys import create_api_key


@pytest.fixture
def api_key(session: Session) -> str:
    _, key = create_api_key(session, "test-backend", clock.now())
    session.commit()
    return key


@pytest.fixture
def api(app: Flask, api_key: str) -> Callable[..., object]:
    """Call the API as an authenticated backend: ``api("post", path, json=...)``."""
    client: FlaskClient = app.test_client()

    def call(method: str, path: str, **kwargs: object) -> object:
        headers = {"Authorization": f"Bearer {api_key}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        if "json" in kwargs:
            # Encoded as a client would, with the standard library: the portal's
            # own encoder only writes what the portal answers.
            kwargs["data"] = json.dumps(kwargs.pop("json"))
            kwargs["content_type"] = "application/json"
        return getattr(client, method)(f"/api/v1{path}", headers=headers, **kwargs)

    return call
