"""One error shape for the whole API: ``{"error": {"code", "message", "fields"?}}``.

The API is an app of its own, so every refusal under ``/api`` (its own, a
routing 404, a 413, maintenance, a crash) is answered here, as JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from portal.extensions import db
from portal.maintenance import UnderMaintenance
from portal.outages import DatabaseUnavailable, answer_outages, roll_back

log = logging.getLogger(__name__)

# Machine-readable codes for the HTTP errors Werkzeug raises before a view runs.
HTTP_CODES = {
    400: "invalid_json",
    401: "unauthorized",
    402: "limit_reached",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}
RATE_LIMITED = "Too many requests for this API key; retry after the time in Retry-After."


class ApiError(Exception):
    """An answer other than success, raised by API views and turned into JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields, self.headers = fields, headers or {}

    @property
    def document(self) -> dict[str, Any]:
        """The answer's body."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return {"error": body}


def validation_error(fields: dict[str, str]) -> ApiError:
    """422 listing every invalid field."""
    listed = ", ".join(sorted(fields))
    return ApiError(422, "validation_failed", f"Some fields are invalid: {listed}.", fields)


def user_not_found() -> ApiError:
    return ApiError(404, "user_not_found", "No user has this email address.")


def rate_limited(wait: int, message: str = RATE_LIMITED) -> ApiError:
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(wait)})


def from_http_exception(error: HTTPException) -> ApiError:
    """An HTTP error raised outside our views (routing, size limits, maintenance) as the API's.

    Keeps Allow on 405 and Retry-After on 429 and 503.
    """
    status = error.code or 500
    if isinstance(error, UnderMaintenance):
        code, message = "maintenance", error.description
    elif isinstance(error, DatabaseUnavailable):
        code, message = "database_unavailable", error.description
    else:
        code = HTTP_CODES.get(status, "http_error")
        message = RATE_LIMITED if status == 429 else (error.description or error.name)
    headers = {
        header: value for header, value in error.get_headers() if header.lower() != "content-type"
    }
    return ApiError(status, code, str(message), headers=headers)


def error_response(error: ApiError) -> Response:
    response = jsonify(error.document)
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _refused(error: ApiError) -> Response:
        roll_back(db.session())  # whatever the refused request began
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        roll_back(db.session())
        return error_response(from_http_exception(error))

    answer_outages(app, lambda unavailable: error_response(from_http_exception(unavailable)))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        roll_back(db.session())
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(
            ApiError(500, "internal_error", "The server failed; retry the request.")
        )
