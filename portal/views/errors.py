"""Error answers for pages: a page in the site's layout, or a fragment for HTMX."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, make_response, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from portal.extensions import db
from portal.maintenance import UnderMaintenance
from portal.outages import answer_outages, roll_back
from portal.views.security import without_reading_the_user

log = logging.getLogger(__name__)

MESSAGES = {
    400: "The request could not be understood.",
    403: "You don't have access to this page.",
    404: "There is nothing here.",
    405: "That action is not allowed here.",
    429: "Too many attempts. Wait a minute and try again.",
    500: "Something went wrong on our side. Try again in a moment.",
}


def _html_error(
    status: int, message: str, error: HTTPException | None = None, *, offline: bool = False
) -> Response:
    """The error as a page in the site's layout, or a fragment for HTMX.

    ``offline``: the database is what failed, so the page is drawn without
    the signed-in user (whom reading would fail again).
    """
    context = {"status": status, "message": message, "poll_seconds": 0, "offline": offline}
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
