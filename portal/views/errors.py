"""Error answers in the format the client reads: API JSON, an HTMX fragment or a page."""

from __future__ import annotations

import logging

from flask import Flask, Response, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from portal.api.errors import error_response, from_http_exception, is_api_request, server_failed
from portal.extensions import db

log = logging.getLogger(__name__)

MESSAGES = {
    400: "The request could not be understood.",
    403: "You don't have access to this page.",
    404: "There is nothing here.",
    405: "That action is not allowed here.",
    429: "Too many attempts. Wait a minute and try again.",
    500: "Something went wrong on our side. Try again in a moment.",
}


def _html_error(status: int, message: str, error: HTTPException | None = None) -> Response:
    template = "partials/_error.html" if request.headers.get("HX-Request") else "error.html"
    response = make_response(render_template(template, status=status, message=message), status)
    if error is not None:
        # Keep Allow on 405 and Retry-After on 429.
        for header, value in error.get_headers():
            if header.lower() != "content-type":
                response.headers[header] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Response:
        db.session.rollback()
        return _html_error(400, "The form expired or came from another site. Reload and retry.")

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        db.session.rollback()
        if is_api_request():
            return error_response(from_http_exception(error))
        status = error.code or 500
        return _html_error(status, MESSAGES.get(status, error.description or error.name), error)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return _http(error)
        db.session.rollback()
        log.exception("unexpected error answering %s %s", request.method, request.path)
        if is_api_request():
            return error_response(server_failed())
        return _html_error(500, MESSAGES[500])
