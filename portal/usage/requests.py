"""A request to record usage, and its validation: every field checked, every problem named.

Shared by ``record_usage``, the API's single endpoint and each event of a
batch, so all three accept and refuse exactly alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from portal import encoding
from portal.accounts import EMAIL_PATTERN
from portal.periods import as_utc
from portal.plans import DEFAULT_EVENT_TYPE, EVENT_TYPES

MAX_QUANTITY = 10_000
"""Largest quantity one event may carry; more is a caller's bug, not usage."""
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future ``occurred_at`` may be: a caller's clock running fast."""
MAX_BACKDATE = timedelta(days=7)
"""How far in the past ``occurred_at`` may be. A backend retrying for longer
than a week has lost track; Stripe would refuse such usage after 35 days."""
MAX_METADATA_BYTES = 2048
MAX_EMAIL_LENGTH = 254
EVENT_FIELDS = frozenset(
    {"user_email", "event_type", "quantity", "idempotency_key", "occurred_at", "metadata"}
)


class InvalidUsage(ValueError):
    """The request to record usage is malformed; ``errors`` maps each field to its problem."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {message}" for field, message in self.errors.items()))


@dataclass(frozen=True)
class UsageRequest:
    """A validated request to record usage."""

    idempotency_key: str
    event_type: str
    quantity: int
    occurred_at: datetime
    metadata: dict[str, Any] | None


def is_text(value: object) -> bool:
    """A string PostgreSQL can store: UTF-8 encodable (no lone surrogate) and without NUL."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def field_name(name: str) -> str:
    """A field's name as it can be written back in an answer: lone surrogates escaped."""
    return name if is_text(name) else name.encode("utf-8", "backslashreplace").decode()


def is_plausible_email(value: object) -> bool:
    return (
        is_text(value)
        and len(str(value)) <= MAX_EMAIL_LENGTH
        and EMAIL_PATTERN.match(str(value).strip()) is not None
    )


def validate_usage_request(
    *,
    idempotency_key: object,
    now: datetime,
    event_type: object = DEFAULT_EVENT_TYPE,
    quantity: object = 1,
    occurred_at: object = None,
    metadata: object = None,
) -> UsageRequest:
    """Check every field at once; ``InvalidUsage`` lists all that are wrong."""
    errors: dict[str, str] = {}
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        errors["idempotency_key"] = "is required and must be a non-empty string"
    elif len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        errors["idempotency_key"] = f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
    elif not idempotency_key.isprintable() or not is_text(idempotency_key):
        errors["idempotency_key"] = "must contain only printable characters"
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        errors["event_type"] = f"must be one of {', '.join(EVENT_TYPES)}"
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        errors["quantity"] = "must be a whole number"
    elif not 1 <= quantity <= MAX_QUANTITY:
        errors["quantity"] = f"must be from 1 to {MAX_QUANTITY}"
    when = now
    if occurred_at is not None:
        if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
            errors["occurred_at"] = "must be a date and time with a UTC offset"
        elif occurred_at > now + MAX_CLOCK_SKEW:
            errors["occurred_at"] = "must not be in the future"
        elif occurred_at < now - MAX_BACKDATE:
            errors["occurred_at"] = f"must not be more than {MAX_BACKDATE.days} days in the past"
        else:
            when = as_utc(occurred_at)
    if metadata is not None:
        if not isinstance(metadata, dict):
            errors["metadata"] = "must be an object"
        else:
            problem = _metadata_problem(metadata)
            if problem:
                errors["metadata"] = problem
    if errors:
        raise InvalidUsage(errors)
    assert isinstance(idempotency_key, str) and isinstance(event_type, str)
    assert isinstance(quantity, int)
    assert metadata is None or isinstance(metadata, dict)
    return UsageRequest(idempotency_key, event_type, quantity, when, metadata or None)


def parse_usage_event(data: object, now: datetime) -> tuple[str, UsageRequest]:
    """``(user_email, request)`` from one event as JSON decoded it; ``InvalidUsage`` lists every
    problem."""
    if not isinstance(data, dict):
        raise InvalidUsage({"event": "must be a JSON object"})
    errors = {field_name(name): "unknown field" for name in data if name not in EVENT_FIELDS}
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


def _metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why ``metadata`` cannot be stored, or None.

    It is measured as the encoder writes it for PostgreSQL: integers must fit
    in 64 bits there, and PostgreSQL's ``json`` type refuses NUL characters
    and non-finite numbers.
    """
    problem = _value_problem(metadata)
    if problem:
        return problem
    try:
        encoded = encoding.dump_bytes(metadata)
    except (encoding.EncodeError, TypeError):
        return "must hold only JSON values, with integers of at most 64 bits"
    if len(encoded) > MAX_METADATA_BYTES:
        return f"must be at most {MAX_METADATA_BYTES} bytes as JSON"
    return None


def _value_problem(value: object) -> str | None:
    """What PostgreSQL's ``json`` type would refuse in ``value``: NUL characters, infinities."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must not contain infinite numbers"
    if isinstance(value, str) and "\x00" in value:
        return "must not contain NUL characters"
    if isinstance(value, str) and not is_text(value):
        return "must hold valid Unicode text (no unpaired surrogates)"
    if isinstance(value, dict):
        items: list[object] = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = list(value)
    else:
        return None
    for item in items:
        problem = _value_problem(item)
        if problem:
            return problem
    return None
