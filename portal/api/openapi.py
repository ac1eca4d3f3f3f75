"""The OpenAPI 3.1 document for ``/api/v1``, built from the same constants the API enforces."""

from __future__ import annotations

import functools
from typing import Any

from portal.plans import EVENT_TYPES, PLANS, WarningLevel
from portal.usage.batch import MAX_BATCH_SIZE, BatchResult
from portal.usage.requests import MAX_IDEMPOTENCY_KEY_LENGTH, MAX_QUANTITY
from portal.usage.status import Reason


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response = _json(_ref("Error"), description)
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string"},
    }
}
COMMON_ERRORS = {
    "401": _error(
        "Missing, malformed, unknown or revoked API key.",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "429": _error(
        "Rate limit of this API key, or of failed authentication from this address, reached.",
        RETRY_AFTER,
    ),
    "503": _error("Down for maintenance (code `maintenance`); nothing was changed.", RETRY_AFTER),
}
BODY_ERRORS = {
    "400": _error("The body is not valid JSON."),
    "413": _error("The body is larger than allowed."),
    "415": _error("The body is not application/json."),
    "422": _error("Invalid fields; `fields` names each one."),
}

USAGE_EVENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["user_email", "idempotency_key"],
    "properties": {
        "user_email": {"type": "string", "format": "email", "maxLength": 254},
        "event_type": {"type": "string", "enum": list(EVENT_TYPES), "default": "suggestion"},
        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY, "default": 1},
        "idempotency_key": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
            "description": "Unique per usage; reuse it when retrying.",
        },
        "occurred_at": {
            "type": "string",
            "format": "date-time",
            "description": "With a UTC offset; at most 5 minutes ahead and 7 days back.",
        },
        "metadata": {
            "type": "object",
            "description": "At most 2 KB as UTF-8 JSON; integers of at most 64 bits, "
            "finite numbers, no NUL characters.",
        },
    },
}

USAGE_STATUS = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "allowed",
        "reason",
        "warning_level",
        "used",
        "included",
        "remaining",
        "percent",
        "overage_count",
        "overage_rate_cents",
        "overage_cost_cents",
        "projected_used",
        "plan",
        "period_start",
        "period_end",
        "days_remaining",
        "billing_subject",
        "member_used",
    ],
    "properties": {
        "allowed": {"type": "boolean", "description": "May the user have one more suggestion now?"},
        "reason": {"type": "string", "enum": [str(r) for r in Reason]},
        "warning_level": {"type": "string", "enum": [str(level) for level in WarningLevel]},
        "used": {"type": "integer", "minimum": 0},
        "included": {"type": "integer", "minimum": 0},
        "remaining": {"type": "integer", "minimum": 0},
        "percent": {"type": "number", "minimum": 0},
        "overage_count": {"type": "integer", "minimum": 0},
        "overage_rate_cents": {"type": ["integer", "null"]},
        "overage_cost_cents": {"type": "integer", "minimum": 0},
        "projected_used": {"type": "integer", "minimum": 0},
        "plan": {"type": "string", "enum": list(PLANS)},
        "period_start": {"type": "string", "format": "date-time"},
        "period_end": {"type": "string", "format": "date-time"},
        "days_remaining": {"type": "integer", "minimum": 0},
        "billing_subject": {"type": "string", "description": "user:<email> or organization:<slug>"},
        "member_used": {"type": ["integer", "null"], "description": "The user's part of a pool."},
    },
}

RECORDED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["event_id", "usage", "duplicate"],
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "duplicate": {"type": "boolean"},
        "usage": _ref("UsageStatus"),
    },
}

BATCH_RESPONSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["results", "summary"],
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["index", "status"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "status": {"type": "string", "enum": [str(r) for r in BatchResult]},
                    "event_id": {"type": "string", "format": "uuid"},
                    "errors": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
        "summary": {
            "type": "object",
            "additionalProperties": False,
            "required": [str(r) for r in BatchResult],
            "properties": {str(r): {"type": "integer", "minimum": 0} for r in BatchResult},
        },
    },
}

ERROR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AI suggestions usage API",
            "version": "1.0.0",
            "description": (
                "Ask whether a user may have another suggestion, and record usage exactly "
                "once per idempotency key. Retry with the same key after any network error."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/users/{email}/usage": {
                "get": {
                    "operationId": "getUsage",
                    "summary": "Current usage and whether another suggestion is allowed",
                    "parameters": [
                        {
                            "name": "email",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 254},
                        }
                    ],
                    "responses": {
                        "200": _json(_ref("UsageStatus"), "Usage in the current period."),
                        "404": _error("No such user."),
                        **COMMON_ERRORS,
                    },
                }
            },
            "/usage-events": {
                "post": {
                    "operationId": "recordUsageEvent",
                    "summary": "Record one usage event",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("UsageEvent")}},
                    },
                    "responses": {
                        "201": _json(_ref("Recorded"), "Recorded and counted."),
                        "200": _json(
                            _ref("Recorded"),
                            "This idempotency key was recorded before; nothing new was counted.",
                        ),
                        "402": _error("The plan's hard cap is reached; nothing was recorded."),
                        "403": _error(
                            "The user is disabled (code `user_disabled`); nothing was recorded."
                        ),
                        "404": _error("No such user."),
                        "409": _error("The idempotency key was used for a different usage."),
                        **BODY_ERRORS,
                        **COMMON_ERRORS,
                    },
                }
            },
            "/usage-events/batch": {
                "post": {
                    "operationId": "recordUsageEvents",
                    "summary": f"Record up to {MAX_BATCH_SIZE} usage events",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["events"],
                                    "properties": {
                                        "events": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH_SIZE,
                                            # Items are checked one by one: a bad
                                            # one comes back `invalid` and does not
                                            # fail the batch.
                                            "items": {
                                                "description": (
                                                    "A UsageEvent; anything else is "
                                                    "answered `invalid` with its errors."
                                                ),
                                            },
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("BatchResponse"), "One result per event, in order."),
                        **BODY_ERRORS,
                        **COMMON_ERRORS,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "UsageEvent": USAGE_EVENT,
                "UsageStatus": USAGE_STATUS,
                "Recorded": RECORDED,
                "BatchResponse": BATCH_RESPONSE,
                "Error": ERROR,
            },
        },
    }
