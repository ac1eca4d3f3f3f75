"""Settings read from the environment, checked once at start-up.

A missing or invalid setting raises ``ConfigError`` whose message is one line
naming the variable; ``wsgi.py`` prints it and exits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from limits import parse_many

ENVIRONMENTS = ("production", "development", "test")
DEFAULT_API_RATE_LIMIT = "6000 per minute"
MAX_REQUEST_BODY = 4 * 1024 * 1024
"""Bytes: the longest request body the portal reads (Flask's ``MAX_CONTENT_LENGTH``),
room for a batch of 1,000 usage events each carrying the largest metadata allowed."""
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-secret-key"  # noqa: S105 - never used in production


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it."""


def normalize_database_url(url: str) -> str:
    """Accept the common URL forms and pick the drivers this project ships.

    ``postgres://`` and ``postgresql://`` use psycopg 3; ``sqlite:///path``
    is used as given.
    """
    url = url.strip()
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith(("postgresql+psycopg://", "sqlite://")):
        return url
    raise ConfigError(
        "DATABASE_URL must start with postgresql:// or sqlite:///, got "
        f"{url.split('://', 1)[0] + '://' if '://' in url else repr(url)}"
    )


def load_config(environ: Mapping[str, str], instance_path: str) -> dict[str, Any]:
    """Flask settings from environment variables (see the README's table)."""
    env = environ.get("PORTAL_ENV", "production").strip() or "production"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"PORTAL_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")

    default_db = "sqlite:///" + str(Path(instance_path) / "portal.db")
    database_url = normalize_database_url(environ.get("DATABASE_URL") or default_db)

    secret_key = environ.get("SECRET_KEY", "")
    if not secret_key:
        if env == "production":
            raise ConfigError(
                "SECRET_KEY is required in production (set PORTAL_ENV=development to run locally)"
            )
        secret_key = DEVELOPMENT_SECRET_KEY
    elif len(secret_key) < 16:
        raise ConfigError("SECRET_KEY must be at least 16 characters long")

    port_text = environ.get("PORT", "5000").strip()
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"PORT must be a whole number from 1 to 65535, got {port_text!r}")

    storage = environ.get("RATE_LIMIT_STORAGE_URL", "memory://").strip() or "memory://"
    if not storage.startswith(("memory://", "redis://", "rediss://")):
        raise ConfigError(
            "RATE_LIMIT_STORAGE_URL must be memory:// or a redis:// URL, "
            f"got {storage.split(':')[0]!r}"
        )
    api_rate_limit = environ.get("API_RATE_LIMIT", DEFAULT_API_RATE_LIMIT).strip()
    try:
        parse_many(api_rate_limit)
    except ValueError:
        raise ConfigError(
            f"API_RATE_LIMIT must look like '6000 per minute', got {api_rate_limit!r}"
        ) from None

    proxies = environ.get("TRUSTED_PROXIES", "0").strip()
    if not proxies.isdigit() or int(proxies) > 5:
        raise ConfigError(f"TRUSTED_PROXIES must be a whole number from 0 to 5, got {proxies!r}")

    return {
        "PORTAL_ENV": env,
        "TRUSTED_PROXIES": int(proxies),
        "RATELIMIT_STORAGE_URI": storage,
        "API_RATE_LIMIT": api_rate_limit,
        "TESTING": env == "test",
        "SECRET_KEY": secret_key,
        "PORT": int(port_text),
        "SQLALCHEMY_DATABASE_URI": database_url,
        # Session cookies: never readable by scripts, not sent on cross-site
        # POSTs, and only over HTTPS in production.
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": env == "production",
        "MAX_CONTENT_LENGTH": MAX_REQUEST_BODY,  # 413 past it, on every page and endpoint
        "WTF_CSRF_TIME_LIMIT": None,  # valid as long as the session: dashboards stay open
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(database_url),
    }


def engine_options(database_url: str) -> dict[str, Any]:
    """Engine settings per backend: SQLite waits for the writer lock instead of failing.

    Dead PostgreSQL connections are caught by ``portal.ping_connections_after_idle``.
    """
    if database_url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {}


def environ_config(instance_path: str) -> dict[str, Any]:
    return load_config(os.environ, instance_path)
