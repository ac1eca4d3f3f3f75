"""Settings read from the environment, checked once at start-up.

A missing or invalid setting raises ``ConfigError`` whose message is one line
naming the variable. Only serving pages needs ``SECRET_KEY`` (it signs the
session cookies): ``flask`` commands and the reporter run without one, and
``check_serving`` refuses to start a production server without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many

ENVIRONMENTS = ("production", "development", "test")
DEFAULT_API_RATE_LIMIT = "6000 per minute"
DEFAULT_POLL_SECONDS = 10
MAX_REQUEST_BODY = 4 * 1024 * 1024
"""Bytes: the longest request body any route reads (a batch of 1,000 usage events each
carrying the largest metadata allowed); routes set smaller limits of their own."""
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-secret-key"  # noqa: S105 - never used in production
TRUE_WORDS = ("1", "true", "yes", "on")


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it."""


def normalize_database_url(url: str) -> str:
    """Accept the common PostgreSQL URL forms and pick psycopg 3, the driver this project ships."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("postgresql+psycopg://"):
        return url
    scheme = url.split("://", 1)[0] + "://" if "://" in url else repr(url)
    raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {scheme}")


def load_config(
    environ: Mapping[str, str], instance_path: str, *, database_url: str | None = None
) -> dict[str, Any]:
    """Flask settings from environment variables (see the README's table).

    ``database_url`` overrides ``DATABASE_URL`` (tests); with neither, the
    embedded development server is used (``portal.devdb``), started if need be.
    """
    env = _environment(environ)
    secret_key = _secret_key(environ, env)

    port = _whole_number(environ, "PORT", "5000", 1, 65535)
    proxies = _whole_number(environ, "TRUSTED_PROXIES", "0", 0, 5)
    poll_seconds = _whole_number(environ, "POLL_SECONDS", str(DEFAULT_POLL_SECONDS), 1, 3600)
    idle_hours = _whole_number(environ, "SESSION_IDLE_HOURS", "12", 1, 24 * 30)
    lifetime_days = _whole_number(environ, "SESSION_LIFETIME_DAYS", "14", 1, 365)

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

    base_url = environ.get("PORTAL_BASE_URL", "").strip().rstrip("/")
    if not base_url and env != "production":
        base_url = f"http://127.0.0.1:{port}"
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigError(
                f"PORTAL_BASE_URL must be the portal's address, like https://usage.example.com, "
                f"got {base_url!r}"
            )

    maintenance = environ.get("PORTAL_MAINTENANCE", "").strip().lower()
    if maintenance not in ("", "0", "false", "no", "off", *TRUE_WORDS):
        raise ConfigError(f"PORTAL_MAINTENANCE must be 1 or 0, got {maintenance!r}")

    if database_url is None:
        database_url = environ.get("DATABASE_URL", "").strip() or _embedded_url(instance_path)

    return {
        "PORTAL_ENV": env,
        "TESTING": env == "test",
        "SECRET_KEY": secret_key,
        "PORT": port,
        "PORTAL_BASE_URL": base_url or None,
        "TRUSTED_PROXIES": proxies,
        "POLL_SECONDS": poll_seconds,
        "SESSION_IDLE_HOURS": idle_hours,
        "SESSION_LIFETIME_DAYS": lifetime_days,
        # The signed cookie cannot outlive the server-side session it names.
        "PERMANENT_SESSION_LIFETIME": timedelta(days=lifetime_days),
        "PORTAL_MAINTENANCE": maintenance in TRUE_WORDS,
        "RATE_LIMIT_STORAGE_URL": storage,
        "API_RATE_LIMIT": api_rate_limit,
        "SQLALCHEMY_DATABASE_URI": normalize_database_url(database_url),
        # Session cookies: never readable by scripts, not sent on cross-site
        # POSTs, and only over HTTPS in production.
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": env == "production",
        "MAX_CONTENT_LENGTH": MAX_REQUEST_BODY,  # 413 past it, on every page and endpoint
        "WTF_CSRF_TIME_LIMIT": None,  # valid as long as the session: dashboards stay open
    }


def check_serving(environ: Mapping[str, str]) -> None:
    """Refuse to serve production pages without a secret key or a database of their own.

    Run by the production server before it starts (``gunicorn_config.py``);
    ``flask`` commands need neither.
    """
    if _environment(environ) != "production":
        return
    if _secret_key(environ, "production") is None:
        raise ConfigError(
            "SECRET_KEY is required to serve pages in production "
            "(set PORTAL_ENV=development to run locally)"
        )
    if not environ.get("DATABASE_URL", "").strip():
        raise ConfigError("DATABASE_URL is required to serve in production")


def serving_warnings(environ: Mapping[str, str], workers: int) -> list[str]:
    """What the production server should say at start-up about a set-up that runs but is weak."""
    if _environment(environ) != "production" or workers < 2:
        return []
    storage = environ.get("RATE_LIMIT_STORAGE_URL", "").strip() or "memory://"
    if not storage.startswith("memory://"):
        return []
    return [
        f"rate limits are counted in each of the {workers} workers' memory, so a client gets "
        f"up to {workers} times each limit (sign-in attempts included): set "
        "RATE_LIMIT_STORAGE_URL=redis://… to count them once"
    ]


def _environment(environ: Mapping[str, str]) -> str:
    env = environ.get("PORTAL_ENV", "production").strip() or "production"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"PORTAL_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    return env


def _secret_key(environ: Mapping[str, str], env: str) -> str | None:
    """The key that signs session cookies; production has none unless it is set."""
    secret_key = environ.get("SECRET_KEY", "") or None
    if secret_key is None:
        return None if env == "production" else DEVELOPMENT_SECRET_KEY
    if len(secret_key) < 16:
        raise ConfigError("SECRET_KEY must be at least 16 characters long")
    return secret_key


def _whole_number(
    environ: Mapping[str, str], name: str, default: str, lowest: int, highest: int
) -> int:
    text = environ.get(name, default).strip()
    if not (text.isascii() and text.isdigit()) or not lowest <= int(text) <= highest:
        raise ConfigError(f"{name} must be a whole number from {lowest} to {highest}, got {text!r}")
    return int(text)


def _embedded_url(instance_path: str) -> str:
    from portal import devdb

    try:
        return devdb.database_url(Path(instance_path))
    except devdb.EmbeddedUnavailable as error:
        raise ConfigError(str(error)) from None
