"""One error shape for the whole API: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from portal.extensions import db

API_PREFIX = "/api/"

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


def error_response(
    status: int, code: str, message: str, fields: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    response = jsonify({"error": body})
    response.status_code = status
    return response


def api_http_error(error: HTTPException) -> Response:
    """An HTTP error raised outside our views (routing, size limits, rate limits) as API JSON."""
    status = error.code or 500
    message = error.description or error.name
    if status == 429:
        message = "Too many requests for this API key; retry after the time in Retry-After."
    response = error_response(status, HTTP_CODES.get(status, "http_error"), message)
    # Keep Allow on 405 and Retry-After on 429.
    for header, value in error.get_headers():
        if header.lower() != "content-type":
            response.headers[header] = value
    return response


def is_api_request() -> bool:
    return request.path.startswith(API_PREFIX)


def api_error_response(error: ApiError | HTTPException) -> Response:
    """The JSON answer to a refused API request; what it began is rolled back."""
    db.session.rollback()
    if isinstance(error, HTTPException):
        return api_http_error(error)
    response = error_response(error.status, error.code, error.message, error.fields)
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, api_error_response)
