"""Maintenance mode (``PORTAL_MAINTENANCE=1``): every URL answers 503, and nothing is recorded.

The check runs before any view of either app (pages and API), and the
answer is drawn without reading the signed-in user, so no request reaches
the database meanwhile. Each app answers in its own format (a page, a
fragment that keeps polling, or the API's JSON error). Two URLs stay as
they are: static files, which the branded page needs, and ``/healthz``,
which says the server is alive: a load balancer that took every server out
of rotation would show its own error page instead of the portal's.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from werkzeug.exceptions import ServiceUnavailable

RETRY_AFTER_SECONDS = 120
RUNNING = ("static", "health.healthz")
"""Endpoints answered as usual in maintenance (see the module's docstring)."""


class UnderMaintenance(ServiceUnavailable):
    description = "The portal is down for maintenance. Try again in a few minutes."

    def __init__(self) -> None:
        super().__init__(retry_after=RETRY_AFTER_SECONDS)


def refuse_during_maintenance() -> None:
    if current_app.config.get("PORTAL_MAINTENANCE") and request.endpoint not in RUNNING:
        raise UnderMaintenance()


def init_app(app: Flask) -> None:
    # Read per request, so the setting can be changed on a running app (tests do).
    app.before_request(refuse_during_maintenance)
