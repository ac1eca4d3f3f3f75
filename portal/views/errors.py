"""Error answers for pages: a page in the site's layout, or a fragment for HTMX."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, make_response, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from portal.extensions import db
from portal.maintenance import UnderMaintenance
from portal.outages import answer_outages, roll_back
from portal.views.security import local_path, without_reading_the_user

log = logging.getLogger(__name__)

MESSAGES = {
    400: "The request could not be understood.",
    403: "You don't have access to this page.",
    404: "There is nothing here.",
    405: "That action is not allowed here.",
    429: "Too many attempts. Wait a minute and try again.",
    500: "Something went wrong on our side. Try again in a moment.",
}
TITLES = {
    400: "That didn't work",
    403: "Not for you to see",
    404: "Page not found",
    405: "Not allowed here",
    413: "That was too large",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Back in a moment",
}
"""What an error page is called: its heading and its tab's title, never a bare number."""


def _html_error(
    status: int, message: str, error: HTTPException | None = None, *, offline: bool = False
) -> Response:
    """The error as a page in the site's layout, or a fragment for HTMX.

    ``offline``: the database is what failed, so the page is drawn without
    the signed-in user (whom reading would fail again).
    """
    context = {
        "status": status,
        "title": TITLES.get(status, "That didn't work" if status < 500 else "Something went wrong"),
        "message": message,
        "poll_seconds": 0,
        "offline": offline,
        "retry_after": _retry_after(error),
        # The same address again, for failures that may pass: only ever a
        # path on this site ("/%5Cevil.example" decodes to one that is not).
        "try_again": local_path(request.full_path.rstrip("?"))
        if request.method == "GET" and (status >= 500 or status == 429)
        else None,
    }
    if offline:
        without_reading_the_user()
    if request.headers.get("HX-Request"):
        template = "partials/_error.html"
        if request.endpoint == "usage.current":
            # The live region's poll: a fragment that goes on polling.
            template = "partials/usage/_unavailable.html"
            context.update(
                poll_seconds=current_app.config["POLL_SECONDS"], poll_url=url_for("usage.current")
            )
    else:
        template = "error.html"
    response = make_response(render_template(template, **context), status)
    if error is not None:
        # Keep Allow on 405 and Retry-After on 429 and 503.
        for header, value in error.get_headers():
            if header.lower() != "content-type":
                response.headers[header] = value
    return response


def _retry_after(error: HTTPException | None) -> int | None:
    """The seconds a 429 or 503 asks the visitor to wait, if it says."""
    if error is None:
        return None
    for header, value in error.get_headers():
        if header.lower() == "retry-after" and value.isdigit():
            return int(value)
    return None


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Response:
        roll_back(db.session())
        return _html_error(400, "The form expired or came from another site. Reload and retry.")

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        roll_back(db.session())
        status = error.code or 500
        if isinstance(error, UnderMaintenance):
            return _html_error(status, str(error.description), error, offline=True)
        return _html_error(status, MESSAGES.get(status, error.description or error.name), error)

    answer_outages(
        app,
        lambda unavailable: _html_error(
            503, str(unavailable.description), unavailable, offline=True
        ),
    )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        roll_back(db.session())
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return _html_error(500, MESSAGES[500])
