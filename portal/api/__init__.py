"""The usage API for the assistant's backends: ``/api/v1``, a small Flask app of its own.

Every endpoint but the OpenAPI document needs ``Authorization: Bearer <key>``
with a key from ``flask create-api-key``. The app has no cookie session, CSRF
or sign-in; it shares the database, rate limits, security headers and
maintenance mode with the pages (``portal.create_app`` mounts it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from portal import clock
from portal.api import admission
from portal.api.errors import (
    ApiError,
    register_error_handlers,
    user_not_found,
    validation_error,
)
from portal.api.openapi import openapi_document
from portal.api.parsing import read_json_object
from portal.config import MAX_REQUEST_BODY
from portal.extensions import db
from portal.ratelimit import Limit
from portal.usage import (
    IdempotencyKeyReused,
    InvalidUsage,
    RecordResult,
    UnknownUser,
    UserDisabled,
    check_usage,
)
from portal.usage.batch import (
    MAX_BATCH_SIZE,
    BatchItem,
    BatchItemResult,
    BatchResult,
    record_usage_batch,
)
from portal.usage.recording import record_request
from portal.usage.requests import field_name, is_plausible_email, parse_usage_event

blueprint = Blueprint("api", __name__, url_prefix="/v1")

BATCH_BODY_LIMIT = MAX_REQUEST_BODY
"""Room for 1,000 events each carrying the largest metadata allowed."""
EVENT_BODY_LIMIT = 64 * 1024
"""Bytes: an event with the largest metadata allowed, with room to spare."""


@blueprint.before_request
def require_api_key() -> None:
    """Refuse requests over the rate limit or without a live API key, before anything else."""
    if request.endpoint == "api.openapi":
        return
    request.max_content_length = (
        BATCH_BODY_LIMIT if request.endpoint == "api.record_usage_events" else EVENT_BODY_LIMIT
    )
    g.api_key = admission.admit(
        db.session(),
        current_app.extensions["rate_limits"],
        current_app.extensions["api_rate_limit"],
        request.headers.get("Authorization", ""),
        request.remote_addr or "unknown",
        clock.now(),
    )


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    return jsonify(openapi_document())


@blueprint.get("/users/<email>/usage")
def get_usage(email: str) -> Response:
    """Where the user stands now: may they have another suggestion?"""
    if not is_plausible_email(email):
        raise user_not_found()
    try:
        status = check_usage(db.session(), email, clock.now())
    except UnknownUser:
        raise user_not_found() from None
    return jsonify(status.as_dict())


@blueprint.post("/usage-events")
def record_usage_event() -> tuple[Response, int]:
    """Record one event, exactly once per idempotency key; 201, or 200 for a key seen before."""
    now = clock.now()
    try:
        email, usage = parse_usage_event(read_json_object(request), now)
    except InvalidUsage as invalid:
        raise validation_error(invalid.errors) from None
    try:
        outcome = record_request(db.session(), email, usage, now)  # commits
    except UnknownUser:
        raise user_not_found() from None
    except UserDisabled as disabled:
        raise ApiError(403, "user_disabled", str(disabled)) from None
    except IdempotencyKeyReused as reused:
        raise ApiError(
            409, "idempotency_key_reused", str(reused), {"idempotency_key": "used before"}
        ) from None
    status = outcome.status
    if outcome.result is RecordResult.LIMIT_REACHED:
        raise ApiError(
            402,
            "limit_reached",
            f"The {status.plan.name} plan's {status.included} suggestions for this period are "
            f"used up; it resets on {status.period.end.date().isoformat()}. Nothing was recorded.",
        )
    duplicate = outcome.result is RecordResult.DUPLICATE
    document = {"event_id": outcome.event_id, "usage": status.as_dict(), "duplicate": duplicate}
    return jsonify(document), 200 if duplicate else 201


@blueprint.post("/usage-events/batch")
def record_usage_events() -> Response:
    """Record up to 1,000 events in one round trip; one result per event, in order."""
    now = clock.now()
    body = read_json_object(request)
    unknown = {field_name(name): "unknown field" for name in body if name != "events"}
    events = body.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH_SIZE:
        unknown["events"] = f"must be a list of 1 to {MAX_BATCH_SIZE} events"
    if unknown:
        raise validation_error(unknown)
    assert isinstance(events, list)

    results: list[BatchItemResult | None] = [None] * len(events)
    valid: list[tuple[int, BatchItem]] = []
    for index, raw in enumerate(events):
        try:
            email, usage = parse_usage_event(raw, now)
        except InvalidUsage as invalid:
            results[index] = BatchItemResult.invalid(invalid.errors)
        else:
            valid.append((index, BatchItem(email, usage)))
    recorded = record_usage_batch(db.session(), [item for _, item in valid], now)  # commits
    for (index, _), result in zip(valid, recorded, strict=True):
        results[index] = result

    out: list[dict[str, Any]] = []
    for index, settled in enumerate(results):
        assert settled is not None
        entry: dict[str, Any] = {"index": index, "status": str(settled.result)}
        if settled.event_id is not None:
            entry["event_id"] = settled.event_id
        if settled.errors:
            entry["errors"] = settled.errors
        out.append(entry)
    summary = Counter(str(entry["status"]) for entry in out)
    return jsonify({"results": out, "summary": {s.value: summary[s.value] for s in BatchResult}})


def create_api_app(app: Flask) -> Flask:
    """The API's own app, on a base the pages share (``portal.base_app``)."""
    app.extensions["api_rate_limit"] = Limit.parse(
        "api-key", str(app.config["API_RATE_LIMIT"]), moving=False
    )
    app.register_blueprint(blueprint)
    register_error_handlers(app)
    return app
