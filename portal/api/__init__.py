"""The usage API for the assistant's backends: ``/api/v1``.

Every endpoint but the OpenAPI document needs ``Authorization: Bearer <key>``
with a key from ``flask create-api-key``. ``POST /api/v1/usage-events`` is
answered in front of Flask, by ``portal.api.record_event``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from portal import clock
from portal.api import admission, record_event
from portal.api.errors import (
    ApiError,
    api_error_response,
    register_error_handlers,
    user_not_found,
    validation_error,
)
from portal.api.openapi import openapi_document
from portal.api.parsing import is_plausible_email, parse_usage_event, read_json_object
from portal.api.ratelimit import ApiRateLimit
from portal.config import MAX_REQUEST_BODY
from portal.extensions import db
from portal.usage import InvalidUsage, UnknownUser, check_usage
from portal.usage.batch import (
    MAX_BATCH_SIZE,
    BatchItem,
    BatchItemResult,
    BatchResult,
    record_usage_batch,
)

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

BATCH_BODY_LIMIT = MAX_REQUEST_BODY
"""Room for 1,000 events each carrying the largest metadata allowed."""


@blueprint.before_request
def require_api_key() -> None:
    """Refuse requests over the rate limit or without a live API key, before anything else."""
    if request.endpoint == "api.openapi":
        return
    admission.admit(
        db.session(),
        current_app.extensions["api_rate_limit"],
        request.headers.get("Authorization", ""),
        request.remote_addr,
        clock.now(),
        remembered=False,
    )
    request.max_content_length = (
        BATCH_BODY_LIMIT
        if request.endpoint == "api.record_usage_events"
        else record_event.EVENT_BODY_LIMIT
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


blueprint.add_url_rule(
    record_event.PATH.removeprefix(blueprint.url_prefix or ""),
    "record_usage_event",
    record_event.served_in_front_of_flask,
    methods=["POST"],
)


@blueprint.errorhandler(ApiError)
@blueprint.errorhandler(HTTPException)
def _refused(error: ApiError | HTTPException) -> Response:
    """Refusals of the API's own endpoints, as JSON."""
    return api_error_response(error)


@blueprint.post("/usage-events/batch")
def record_usage_events() -> Response:
    """Record up to 1,000 events in one round trip; one result per event, in order."""
    now = clock.now()
    body = read_json_object(request)
    unknown = {name: "unknown field" for name in body if name != "events"}
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
            entry["event_id"] = result.event_id
        if result.errors:
            entry["errors"] = result.errors
        out.append(entry)
    summary = Counter(str(r["status"]) for r in out)
    document = {"results": out, "summary": {s.value: summary[s.value] for s in BatchResult}}
    return current_app.response_class(record_event.json_body(document), mimetype="application/json")


def init_app(app: Flask) -> None:
    app.extensions["api_rate_limit"] = ApiRateLimit(
        str(app.config["API_RATE_LIMIT"]),
        str(app.config.get("RATELIMIT_STORAGE_URI", "memory://")),
    )
    app.register_blueprint(blueprint)
    register_error_handlers(app)
    app.wsgi_app = record_event.RecordEventEndpoint(app, app.wsgi_app)  # type: ignore[method-assign]
