"""``/healthz``: liveness for load balancers.

A blueprint of its own, outside the sign-in blueprint, so none of the
sign-in rate limiter's per-request hooks run for it (see
``portal.limit_sign_in_only``): a probe costs the least a request can.
"""

from __future__ import annotations

from flask import Blueprint

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> tuple[str, int, dict[str, str]]:
    """Answers without touching the database."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}
