"""Headers every response carries, who is signed in, and what signed-out visitors see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha512
from typing import TYPE_CHECKING

from flask import Flask, Request, Response, redirect, request, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_login import AnonymousUserMixin, UserMixin
from sqlalchemy import Connection
from werkzeug.http import HTTP_STATUS_CODES

from portal.extensions import login_manager
from portal.identities import find_identity
from portal.views import reads

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# No inline script or style anywhere: htmx's own indicator styles are turned
# off in base.html, and bars are <progress> elements rather than styled divs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
_SECURITY_HEADERS_BY_NAME = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)


HSTS = ("Strict-Transport-Security", "max-age=31536000")


def missing_security_headers(present: set[str], secure: bool) -> list[tuple[str, str]]:
    """The headers of ``SECURITY_HEADERS`` not ``present`` (lower-case names), HSTS on HTTPS."""
    missing = [
        (name, value) for lower, name, value in _SECURITY_HEADERS_BY_NAME if lower not in present
    ]
    if secure and HSTS[0].lower() not in present:
        missing.append(HSTS)
    return missing


def start_secure_response(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    status: int,
    headers: list[tuple[str, str]],
) -> None:
    """Start the answer of a WSGI layer in front of Flask, with the headers Flask's answers get.

    ``add_security_headers`` does this for Flask's responses; the layers in
    front of it (``portal.api.record_event``, ``portal.views.live_region``)
    call this instead.
    """
    present = {name.lower() for name, _ in headers}
    secure = environ.get("wsgi.url_scheme") == "https"
    start_response(
        f"{status} {HTTP_STATUS_CODES[status]}",
        headers + missing_security_headers(present, secure),
    )


def add_security_headers(response: Response) -> Response:
    """Every header of ``SECURITY_HEADERS`` the response does not set itself, and HSTS on HTTPS."""
    # One pass over the response's headers; ``setdefault`` would scan them
    # all once per header.
    present = {name.lower() for name, _ in response.headers}
    response.headers.extend(missing_security_headers(present, request.is_secure))
    return response


@dataclass(frozen=True)
class SignedInUser(UserMixin):
    """The signed-in user as pages see it (``current_user``): the id and the email.

    Loaded on every request, so it comes from one small statement (or from the
    page's own statement, see ``read_user_with``) instead of the ``User`` model;
    views that need more of the account load it themselves.
    """

    id: int
    email: str


UserReader = Callable[[Connection, int], SignedInUser | None]
"""Reads the signed-in user (``None`` if the account is gone) and whatever else a page needs."""

_user_readers: dict[str, UserReader] = {}


def read_user_with(endpoint: str, reader: UserReader) -> None:
    """Load the signed-in user of ``endpoint``'s requests with ``reader``.

    A page that reads the user's own row anyway (the usage bar does) loads the
    user in that same statement instead of one more round trip first.
    """
    _user_readers[endpoint] = reader


@login_manager.user_loader
def load_user(user_id: str) -> SignedInUser | None:
    """The session's user; ``None`` (signed out) when the account no longer exists."""
    if not (user_id.isascii() and user_id.isdigit()):
        return None
    connection = reads.read_connection()
    reader = _user_readers.get(request.endpoint or "")
    if reader is not None:
        return reader(connection, int(user_id))
    identity = find_identity(connection, int(user_id))
    return SignedInUser(identity.id, identity.email) if identity is not None else None


def unauthorized() -> Response:
    """Signed-out visitors go to /login; an HTMX poll makes the whole page go there."""
    login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
    if request.headers.get("HX-Request"):
        response = Response(status=401)
        response.headers["HX-Redirect"] = url_for("auth.login")
        return response
    return redirect(login_url)  # type: ignore[return-value]


# Registered without the (untyped) decorator so views can call it, typed, too.
login_manager.unauthorized_handler(unauthorized)


def session_identifier(client_address: str | None, user_agent: str | None) -> str:
    """What Flask-Login's session protection binds a session to: the client's address and browser.

    ``client_address`` is the ``X-Forwarded-For`` header when there is one
    (its first address counts), else the peer's address. Computed exactly as
    Flask-Login 0.6 does, so sessions signed in before stay valid; kept here
    so the live region's layer in front of Flask (``portal.views.live_region``)
    checks the very value Flask-Login does.
    """
    address = client_address.encode().split(b",")[0].strip() if client_address is not None else None
    agent = user_agent.encode() if user_agent is not None else None
    # Flask-Login formats the bytes themselves: "b'203.0.113.7'|b'Mozilla/5.0'".
    return sha512(f"{address!r}|{agent!r}".encode()).hexdigest()


def _request_session_identifier() -> str:
    return session_identifier(
        request.headers.get("X-Forwarded-For", request.remote_addr),
        request.headers.get("User-Agent"),
    )


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, at no cost to requests that carry no session cookie.

    API calls, health checks and first visits have none; Flask would still
    build a signing serializer for each of them.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    app.session_interface = CookieSessions()
    reads.init_app(app)
    login_manager.init_app(app)
    login_manager.anonymous_user = AnonymousUserMixin
    login_manager._session_identifier_generator = _request_session_identifier
    app.after_request(add_security_headers)
