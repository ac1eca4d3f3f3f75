"""``/healthz``: liveness for load balancers."""

from __future__ import annotations

from flask import Blueprint

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> tuple[str, int, dict[str, str]]:
    """Answers without touching the database."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}
