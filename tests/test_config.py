from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, make_url, text

from portal.config import ConfigError, load_config, normalize_database_url

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "postgresql://portal@db.example/portal"


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://app@db:5432/portal", "postgresql+psycopg://app@db:5432/portal"),
        ("postgres://app:pw@db/portal", "postgresql+psycopg://app:pw@db/portal"),
        ("postgresql+psycopg://app@db/portal", "postgresql+psycopg://app@db/portal"),
    ],
)
def test_database_url_forms_are_accepted(given: str, used: str) -> None:
    assert normalize_database_url(given) == used


def test_without_database_url_the_embedded_server_is_used(tmp_path: Path) -> None:
    config = load_config({}, str(tmp_path))
    url = make_url(config["SQLALCHEMY_DATABASE_URI"])
    assert (url.drivername, url.database) == ("postgresql+psycopg", "portal")
    assert url.query["host"] == str(tmp_path / "postgres")
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.scalar(text("SHOW server_version")).startswith("18.")
    engine.dispose()
    assert config["PORT"] == 5000


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"PORTAL_ENV": "development", "PORT": "http"}, "PORT"),
        ({"PORTAL_ENV": "development", "PORT": "70000"}, "PORT"),
        ({"PORTAL_ENV": "development", "DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"PORTAL_ENV": "staging"}, "PORTAL_ENV"),
    ],
)
def test_invalid_settings_are_named(environ: dict[str, str], named: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config({"DATABASE_URL": DATABASE, **environ}, str(tmp_path))


def test_development_runs_without_a_secret_key(tmp_path: Path) -> None:
    assert load_config({"PORTAL_ENV": "development"}, str(tmp_path), database_url=DATABASE)[
        "SECRET_KEY"
    ]


def test_start_up_with_a_bad_setting_stops_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "PORTAL_ENV")}
    env.update(PORT="http", DATABASE_URL=DATABASE)
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: PORT must be a whole number from 1 to 65535, got 'http'"
    ]


def test_sign_in_page_answers(app: Flask) -> None:
    response = app.test_client().get("/login")
    assert response.status_code == 200
    assert b"Sign in" in response.data
    # Signed-out visitors of the home page end up at the sign-in form.
    home = app.test_client().get("/", follow_redirects=True)
    assert home.request.path == "/login" and b"Sign in" in home.data


def test_health_check_answers_without_signing_in(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert (response.status_code, response.data) == (200, b"ok\n")


def test_behind_a_trusted_proxy_the_forwarded_client_is_used(database_url: str) -> None:
    from portal import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TRUSTED_PROXIES": 1})
    seen: list[str | None] = []

    @app.get("/__whoami")
    def whoami() -> str:
        from flask import request

        seen.append(request.remote_addr)
        return request.scheme

    response = app.test_client().get(
        "/__whoami", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    )
    assert response.data == b"https" and seen == ["203.0.113.9"]


def test_proxy_count_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        load_config(
            {"PORTAL_ENV": "development", "TRUSTED_PROXIES": "many"},
            str(tmp_path),
            database_url=DATABASE,
        )


def test_behind_a_trusted_proxy_the_api_sees_the_forwarded_client(database_url: str) -> None:
    # The API is an app of its own: the proxy's client and scheme must reach
    # it too, for its rate limits and HSTS.
    from portal import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TRUSTED_PROXIES": 1})
    client = app.test_client()

    def post(address: str) -> Any:
        forwarded = {"X-Forwarded-For": address, "X-Forwarded-Proto": "https"}
        return client.post("/api/v1/usage-events", json={}, headers=forwarded)

    failures = [post("203.0.113.9").status_code for _ in range(30)]
    again, other_client = post("203.0.113.9"), post("203.0.113.10")
    assert set(failures) == {401}
    # Failed authentication is limited per client address: the forwarded one.
    assert [again.status_code, other_client.status_code] == [429, 401]
    assert other_client.headers["Strict-Transport-Security"].startswith("max-age=")
