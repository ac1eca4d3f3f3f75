"""Headers every response carries, and what signed-out visitors see."""

from __future__ import annotations

from flask import Flask, Response, redirect, request, url_for
from flask_login import AnonymousUserMixin

from portal.extensions import db, login_manager
from portal.models import User

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


def add_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id)) if user_id.isdigit() else None


@login_manager.unauthorized_handler
def unauthorized() -> Response:
    """Signed-out visitors go to /login; an HTMX poll makes the whole page go there."""
    login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
    if request.headers.get("HX-Request"):
        response = Response(status=401)
        response.headers["HX-Redirect"] = url_for("auth.login")
        return response
    return redirect(login_url)  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.anonymous_user = AnonymousUserMixin
    app.after_request(add_security_headers)
