"""The usage API for the assistant's backends: ``/api/v1``.

Every endpoint but the OpenAPI document needs ``Authorization: Bearer <key>``
with a key from ``flask create-api-key``.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from portal.api.errors import ApiError, api_error_response, register_error_handlers
from portal.api.openapi import openapi_document
from portal.api.parsing import is_plausible_email, parse_usage_event, read_json_object
from portal.api.ratelimit import ApiRateLimit
from portal.apikeys import ApiKeyRevoked, authenticate, forget_key, hash_key, remembered_key
from portal.extensions import db
from portal.usage import (
    IdempotencyKeyReused,
    InvalidUsage,
    RecordResult,
    UnknownUser,
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

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

EVENT_BODY_LIMIT = 64 * 1024
BATCH_BODY_LIMIT = 4 * 1024 * 1024
"""Room for 1,000 events each carrying the largest metadata allowed."""


def _now() -> datetime:
    return datetime.now(UTC)


def _rate_limit_bucket() -> str:
    # The limit applies before authentication, so it buckets by the presented
    # credential itself (hashed); requests without one share their address's.
    header = request.headers.get("Authorization", "")
    if header:
        return "key:" + hashlib.sha256(header.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def enforce_rate_limit() -> None:
    """429 with Retry-After once the presented key has used its allowance."""
    rate_limit: ApiRateLimit = current_app.extensions["api_rate_limit"]
    wait = rate_limit.retry_after(_rate_limit_bucket(), time.time())
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "Too many requests for this API key; retry after the time in Retry-After.",
            headers={"Retry-After": str(wait)},
        )


@blueprint.before_request
def require_api_key() -> None:
    """Refuse requests over the rate limit or without a live API key, before anything else."""
    if request.endpoint == "api.openapi":
        return
    enforce_rate_limit()
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip() if scheme.lower() == "bearer" else ""
    now = _now()
    info = None
    if request.endpoint == "api.record_usage_event":
        # The recording statement checks that the key is still live
        # (``api_key_id``), so a key this process authenticated a moment ago
        # needs no lookup of its own: one round trip per suggestion.
        info = remembered_key(key, now)
    g.api_key_checked = info is None
    if info is None:
        info = authenticate(db.session(), key, now)
    if info is None:
        raise _unauthorized()
    if info.refreshed:
        db.session.commit()  # at most once a minute: keeps last_used_at
    g.api_key = info
    g.api_key_presented = key
    request.max_content_length = (
        BATCH_BODY_LIMIT if request.endpoint == "api.record_usage_events" else EVENT_BODY_LIMIT
    )


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "Send a valid API key as 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": 'Bearer realm="usage-api"'},
    )


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    return jsonify(openapi_document())


@blueprint.get("/users/<email>/usage")
def get_usage(email: str) -> Response:
    """Where the user stands now: may they have another suggestion?"""
    if not is_plausible_email(email):
        raise ApiError(404, "user_not_found", "No user has this email address.")
    try:
        status = check_usage(db.session(), email, _now())
    except UnknownUser:
        raise ApiError(404, "user_not_found", "No user has this email address.") from None
    return jsonify(status.as_dict())


def _check_remembered_key() -> None:
    """401 for a remembered key that was revoked meanwhile; nothing otherwise.

    A remembered key is checked by the recording statement; a request refused
    before that statement (bad input, unknown user) would otherwise answer a
    revoked key with something else than 401, and so tell it whether an email
    address has an account.
    """
    if g.get("api_key_checked", True):
        return
    if authenticate(db.session(), g.api_key_presented, _now()) is None:
        raise _unauthorized()
    g.api_key_checked = True


@blueprint.errorhandler(ApiError)
@blueprint.errorhandler(HTTPException)
def _refused(error: ApiError | HTTPException) -> Response:
    """Refusals of the API's own endpoints: a revoked key gets 401 whatever else was wrong."""
    if not isinstance(error, ApiError) or error.status != 401:
        try:
            _check_remembered_key()
        except ApiError as unauthorized:
            error = unauthorized
    return api_error_response(error)


@blueprint.post("/usage-events")
def record_usage_event() -> tuple[Response, int]:
    """Record one usage event, exactly once per idempotency key."""
    now = _now()
    body = read_json_object(request)
    try:
        email, usage = parse_usage_event(body, now)
    except InvalidUsage as invalid:
        raise _validation_error(invalid.errors) from None
    session = db.session()
    try:
        outcome = record_request(session, email, usage, now, api_key_id=g.api_key.id)
    except ApiKeyRevoked:
        # Revoked since this process last looked it up: nothing was recorded.
        forget_key(hash_key(g.api_key_presented))
        raise _unauthorized() from None
    except UnknownUser:
        raise ApiError(404, "user_not_found", "No user has this email address.") from None
    except IdempotencyKeyReused as reused:
        raise ApiError(
            409, "idempotency_key_reused", str(reused), {"idempotency_key": "used before"}
        ) from None
    status = outcome.status  # record_request has committed
    if outcome.result is RecordResult.LIMIT_REACHED:
        raise ApiError(
            402,
            "limit_reached",
            f"The {status.plan.name} plan's {status.included} suggestions for this period are "
            f"used up; it resets on {status.period.end.date().isoformat()}. Nothing was recorded.",
        )
    body_out = {"event_id": str(outcome.event_id), "usage": status.as_dict()}
    if outcome.result is RecordResult.DUPLICATE:
        return jsonify({**body_out, "duplicate": True}), 200
    return jsonify({**body_out, "duplicate": False}), 201


@blueprint.post("/usage-events/batch")
def record_usage_events() -> Response:
    """Record up to 1,000 events in one round trip; one result per event, in order."""
    now = _now()
    body = read_json_object(request)
    unknown = {name: "unknown field" for name in body if name != "events"}
    events = body.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH_SIZE:
        unknown["events"] = f"must be a list of 1 to {MAX_BATCH_SIZE} events"
    if unknown:
        raise _validation_error(unknown)
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
    session = db.session()
    recorded = record_usage_batch(session, [item for _, item in valid], now)  # commits
    for (index, _), result in zip(valid, recorded, strict=True):
        results[index] = result

    out: list[dict[str, Any]] = []
    for index, settled in enumerate(results):
        assert settled is not None
        result = settled
        entry: dict[str, Any] = {"index": index, "status": str(result.result)}
        if result.event_id is not None:
            entry["event_id"] = str(result.event_id)
        if result.errors:
            entry["errors"] = result.errors
        out.append(entry)
    summary = Counter(str(r["status"]) for r in out)
    return jsonify({"results": out, "summary": {s.value: summary[s.value] for s in BatchResult}})


def _validation_error(fields: dict[str, str]) -> ApiError:
    listed = ", ".join(sorted(fields))
    return ApiError(422, "validation_failed", f"Some fields are invalid: {listed}.", fields)


def init_app(app: Flask) -> None:
    app.extensions["api_rate_limit"] = ApiRateLimit(
        str(app.config["API_RATE_LIMIT"]),
        str(app.config.get("RATELIMIT_STORAGE_URI", "memory://")),
    )
    app.register_blueprint(blueprint)
    register_error_handlers(app)
