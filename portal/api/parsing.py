"""Turning request JSON into validated usage requests, with every field error at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Request

from portal.accounts import EMAIL_PATTERN
from portal.api.errors import ApiError
from portal.plans import DEFAULT_EVENT_TYPE
from portal.usage.recording import InvalidUsage, UsageRequest, validate_usage_request

EVENT_FIELDS = frozenset(
    {"user_email", "event_type", "quantity", "idempotency_key", "occurred_at", "metadata"}
)
MAX_EMAIL_LENGTH = 254


def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or the API error a client must see."""
    # get_data raises 413 past the request's size limit.
    return json_object(request.mimetype, lambda: request.get_data(cache=False))


def json_object(mimetype: str, read_body: Callable[[], bytes]) -> dict[str, Any]:
    """The body ``read_body`` reads as a JSON object; its type is checked before it is read."""
    if mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    raw = read_body()
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "The body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "validation_failed",
            "The body must be a JSON object.",
            {"body": "must be a JSON object"},
        )
    return data


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON, and PostgreSQL's json type refuses them.
    raise ValueError(f"{name} is not allowed in JSON")


def is_plausible_email(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_EMAIL_LENGTH
        and "\x00" not in value
        and EMAIL_PATTERN.match(value.strip()) is not None
    )


def parse_usage_event(data: object, now: datetime) -> tuple[str, UsageRequest]:
    """``(user_email, request)`` from one event object; ``InvalidUsage`` lists every problem."""
    if not isinstance(data, dict):
        raise InvalidUsage({"event": "must be a JSON object"})
    errors = {name: "unknown field" for name in data if name not in EVENT_FIELDS}
    email = data.get("user_email")
    if not is_plausible_email(email):
        errors["user_email"] = "is required and must be an email address"
    occurred_at: datetime | None = None
    raw_time = data.get("occurred_at")
    if raw_time is not None:
        occurred_at = _parse_time(raw_time)
        if occurred_at is None:
            errors["occurred_at"] = "must be an ISO 8601 date and time with a UTC offset"
    try:
        request = validate_usage_request(
            idempotency_key=data.get("idempotency_key"),
            event_type=data.get("event_type", DEFAULT_EVENT_TYPE),
            quantity=data.get("quantity", 1),
            occurred_at=occurred_at,
            metadata=data.get("metadata"),
            now=now,
        )
    except InvalidUsage as invalid:
        raise InvalidUsage({**invalid.errors, **errors}) from None
    if errors:
        raise InvalidUsage(errors)
    assert isinstance(email, str)
    return email, request


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None or moment.utcoffset() is None:
            return None
        moment.timestamp()  # out-of-range instants (year 1 with an offset) fail here
    except (ValueError, OverflowError):
        return None
    return moment
