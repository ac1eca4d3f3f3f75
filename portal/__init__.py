"""Usage and billing portal for an AI assistant."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast

from flask import Flask
from flask_limiter import Limiter
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.config import ConfigError, engine_options, environ_config, normalize_database_url
from portal.extensions import csrf, db, limiter, migrate

__all__ = ["ConfigError", "create_app"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the portal: settings from the environment, overridden by ``config``."""
    app = Flask(
        __name__,
        instance_path=str(PROJECT_ROOT / "instance"),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    if config is not None and "SQLALCHEMY_DATABASE_URI" in config:
        url = normalize_database_url(config["SQLALCHEMY_DATABASE_URI"])
        config = {**config, "SQLALCHEMY_DATABASE_URI": url}
        config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(url))
    settings = {**environ_config(app.instance_path), **(config or {})}
    app.config.from_mapping(settings)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///"):
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    db.init_app(app)
    with app.app_context():
        ping_connections_after_idle(db.engine)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))

    limiter.init_app(app)
    limit_sign_in_only(app, limiter, "auth")
    csrf.init_app(app)

    from portal import api, assets, cli, views

    assets.init_app(app)
    cli.init_app(app)
    views.init_app(app)
    api.init_app(app)
    csrf.exempt(api.blueprint)  # API clients authenticate with bearer keys, not cookies

    if app.config.get("TRUSTED_PROXIES"):
        # Behind a proxy, client addresses (for rate limits) and the scheme
        # come from its X-Forwarded-* headers, trusted for that many hops
        # only; outermost, so the API's own WSGI layer sees them too.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    return app


def limit_sign_in_only(app: Flask, limiter: Limiter, blueprint: str) -> None:
    """Run Flask-Limiter's per-request hooks for ``blueprint``'s requests only.

    Flask-Limiter guards sign-in attempts only (the API limits each key
    itself, see ``portal.api.ratelimit``), yet ``init_app`` hooks every
    request of the app, and those hooks cost more than a poll's own query.
    The limits themselves live on the sign-in view (its decorators check
    them); here its hooks (the check for blueprint-wide limits, the
    ``X-RateLimit-*`` headers, the per-request context) move to the sign-in
    blueprint, so every other request runs none of them.
    """

    def is_limiters(function: Any) -> bool:
        owner = function.args[0] if isinstance(function, partial) else function
        return getattr(owner, "__self__", owner) is limiter

    registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    for registry in registries:
        hooks = cast(dict[str | None, list[Any]], registry)
        app_wide = hooks.get(None, [])
        moved = [function for function in app_wide if is_limiters(function)]
        if not moved:
            raise RuntimeError("Flask-Limiter's hooks were not found; was init_app called?")
        hooks[None] = [function for function in app_wide if not is_limiters(function)]
        hooks.setdefault(blueprint, []).extend(moved)


IDLE_BEFORE_PING_SECONDS = 10.0
"""A pooled connection unused this long is checked before use."""


def ping_connections_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for a while.

    A connection the database dropped (restart, failover, idle timeout) must
    not fail a request. SQLAlchemy's ``pool_pre_ping`` checks on every
    checkout, a round trip per request; but a connection used a moment ago
    is alive, and under load every connection is. So only connections idle
    for ``IDLE_BEFORE_PING_SECONDS`` are pinged, and a dead one is replaced
    before the request sees it.
    """

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_BEFORE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if not engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise
            alive = False
        if not alive:
            # The pool discards this connection and checks out a new one.
            raise DisconnectionError("pooled connection was closed by the database")


@event.listens_for(Engine, "connect")
def _tune_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets the portal read while a recorder writes; foreign keys are off
    # by default in SQLite.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
