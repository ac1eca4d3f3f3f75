from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.apikeys import create_api_key


@pytest.fixture
def api_key(session: Session) -> str:
    _, key = create_api_key(session, "test-backend", datetime.now(UTC))
    session.commit()
    return key


@pytest.fixture
def api(app: Flask, api_key: str) -> Callable[..., object]:
    """Call the API as an authenticated backend: ``api("post", path, json=...)``."""
    client: FlaskClient = app.test_client()

    def call(method: str, path: str, **kwargs: object) -> object:
        headers = {"Authorization": f"Bearer {api_key}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return getattr(client, method)(f"/api/v1{path}", headers=headers, **kwargs)

    return call
