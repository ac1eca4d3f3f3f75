"""Usage and billing portal for an AI assistant."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

from portal import headers, maintenance
from portal.config import ConfigError, load_config
from portal.database import ping_connections_after_idle
from portal.encoding import OrjsonProvider
from portal.extensions import db, migrate
from portal.ratelimit import RateLimits

__all__ = ["ConfigError", "create_app"]

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
API_PREFIX = "/api"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The portal: its pages, and the usage API mounted at ``/api`` as a small app of its own.

    Settings come from the environment, overridden by ``config``. The API has
    no cookie session, CSRF or sign-in: it authenticates bearer keys. Both
    apps share the settings, the database, the rate limits, the security
    headers and maintenance mode.
    """
    overrides = dict(config or {})
    database_url = overrides.pop("SQLALCHEMY_DATABASE_URI", None)
    instance = str(PROJECT_ROOT / "instance")
    settings = {**load_config(os.environ, instance, database_url=database_url), **overrides}
    rate_limits = RateLimits(settings["RATE_LIMIT_STORAGE_URL"])

    from portal import api, cli, views

    app = base_app("portal", settings, rate_limits)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    views.init_app(app)
    cli.init_app(app)
    _say_what_billing_lacks(app)

    # No secret key: the API never opens a cookie session.
    api_settings = {**settings, "SECRET_KEY": None}
    usage_api = api.create_api_app(base_app("portal.api", api_settings, rate_limits, static=False))
    app.extensions["usage_api"] = usage_api
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {API_PREFIX: usage_api})  # type: ignore[method-assign]
    if settings["TRUSTED_PROXIES"]:
        # Behind a proxy, client addresses (for rate limits) and the scheme
        # come from its X-Forwarded-* headers, trusted for that many hops
        # only; outermost, so both apps see them.
        hops = settings["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    return app


def _say_what_billing_lacks(app: Flask) -> None:
    """Log, once at start-up, what of Stripe's side the settings leave out, and what follows."""
    from portal.billing.settings import load_stripe_settings, load_webhook_secret, stripe_environ

    environ = stripe_environ(app.config)
    if load_webhook_secret(environ) is None:
        log.warning(
            "STRIPE_WEBHOOK_SECRET is not set: POST /stripe/webhook answers 404, and plans "
            "follow Stripe only through flask sync-subscriptions"
        )
    try:
        load_stripe_settings(environ)
    except ConfigError as error:
        log.warning("no upgrades or billing portal on the pages: %s", error)
        return
    if not app.config.get("PORTAL_BASE_URL"):
        log.warning(
            "no upgrades or billing portal on the pages: PORTAL_BASE_URL is not set, and "
            "Stripe needs it to send customers back"
        )


def base_app(
    name: str, settings: Mapping[str, Any], rate_limits: RateLimits, *, static: bool = True
) -> Flask:
    """A Flask app with what pages and API share."""
    app = Flask(
        name,
        root_path=str(PROJECT_ROOT / "portal"),
        instance_path=str(PROJECT_ROOT / "instance"),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static") if static else None,
    )
    app.config.from_mapping(settings)
    app.json = OrjsonProvider(app)
    app.extensions["rate_limits"] = rate_limits
    db.init_app(app)
    with app.app_context():
        ping_connections_after_idle(db.engine)
    maintenance.init_app(app)
    headers.init_app(app)
    return app
