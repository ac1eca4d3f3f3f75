"""Security headers every answer of both apps carries, pages and API alike."""

from __future__ import annotations

from flask import Flask, Response, request

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
HSTS = ("Strict-Transport-Security", "max-age=31536000")


def add_security_headers(response: Response) -> Response:
    """Every header of ``SECURITY_HEADERS`` the response does not set itself, and HSTS on HTTPS."""
    for name, value in SECURITY_HEADERS:
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault(*HSTS)
    return response


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)
