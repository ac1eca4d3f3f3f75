"""``GET /usage/current``: the polled live region, answered in front of Flask when it can be.

Every open dashboard polls this region every ``POLL_SECONDS``, so it is the
page the portal serves most. Its own work is one statement and a small
template; Flask's request lifecycle around it (request and app contexts,
routing, Flask-Login's proxies and hooks, Flask-WTF's check, context
processors, a ``Response`` object) cost about as much again, and verifying
the signed session cookie on every poll a fifth more. Calling the WSGI app in
a loop in one process on PostgreSQL, a poll took 970-990 µs of CPU through
the Flask view and 420-490 µs here.

``LiveRegionEndpoint`` answers the common case itself: a ``GET`` carrying a
validly signed, unexpired session cookie of a signed-in user, bound to the
same client by session protection, whose account exists. Everything else goes
on to the Flask view (``portal.views.usage.current``), which has the full
behaviour: no cookie, a forged or expired one, a session Flask-Login would
rewrite (another client address or browser, a permanent or "remember me"
session), a deleted account (the view signs it out, with ``HX-Redirect`` for
HTMX), ``HEAD``, and any failure here, which is logged first.

Both paths give the same answer from the same parts: ``current_usage_status``
read at the view's clock, ``live_region_answer`` (ETag, ``304``,
``Cache-Control``), ``render_region`` (the one template), the security
headers and ``Vary: Cookie``. The tests compare the two byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask
from itsdangerous import BadSignature
from jinja2 import Environment
from werkzeug.http import parse_etags, quote_etag
from werkzeug.sansio.http import parse_cookie

from portal import clock
from portal.extensions import db, login_manager
from portal.usage import UnknownUser, UsageStatus
from portal.usage.status import current_usage_status
from portal.views.security import session_identifier, start_secure_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

PATH = "/usage/current"
TEMPLATE = "partials/usage/_current.html"
POLL_SECONDS = 10
CACHE_CONTROL = "private, no-cache"
"""Revalidate every time: the bar must never be stale, but an unchanged one costs a 304."""
HTML = "text/html; charset=utf-8"


def status_etag(status: UsageStatus) -> str:
    """Changes whenever anything the live region shows changes."""
    facts = (
        status.plan.id,
        status.subject,
        status.period.start,
        # Two anchors can start a period on the same day and end it on different ones.
        status.period.end,
        status.used,
        status.included,
        status.member_used,
        status.days_remaining,
        status.projected_used,
    )
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:20]


def render_region(templates: Environment, status: UsageStatus, poll_url: str) -> str:
    """The live region's HTML; the dashboard includes the same template with the same values."""
    return templates.get_template(TEMPLATE).render(
        status=status, poll_seconds=POLL_SECONDS, poll_url=poll_url
    )


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def live_region_answer(
    status: UsageStatus, if_none_match: str | None, render: Callable[[UsageStatus], str]
) -> Answer:
    """``304`` when the client's copy (``If-None-Match``) is current, else the rendered region."""
    etag = status_etag(status)
    headers = [("ETag", quote_etag(etag)), ("Cache-Control", CACHE_CONTROL)]
    if parse_etags(if_none_match).contains(etag):
        return Answer(304, headers, b"")
    return Answer(200, headers + [("Content-Type", HTML)], render(status).encode())


VERIFIED_SESSIONS = 4096
"""Session cookies each worker remembers as verified (see ``_open_session``)."""


@dataclass(frozen=True)
class _VerifiedSession:
    keys: tuple[Any, ...]
    signed_at: int
    """Seconds since the epoch, as itsdangerous stamps them."""
    session: dict[str, Any]


class LiveRegionEndpoint:
    """WSGI middleware: answers a signed-in ``GET PATH`` itself, passes everything else on."""

    def __init__(self, app: Flask, downstream: WSGIApplication) -> None:
        with app.app_context():
            self._engine = db.engine
        self._app = app
        self._signing: tuple[tuple[Any, ...], Any] = ((), None)
        self._verified: dict[str, _VerifiedSession] = {}
        self._downstream = downstream

    def _serializer(self) -> Any:
        """The very serializer Flask opens sessions with, rebuilt when its keys change.

        Flask builds one per request from the app's settings; building it
        only when the secret key or its fallbacks change keeps a key rotated
        at run time in force here too.
        """
        app = self._app
        keys = (app.secret_key, *(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        built_for, serializer = self._signing
        if keys != built_for:
            serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
            self._signing = (keys, serializer)
        return serializer

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "GET":
            return self._downstream(environ, start_response)
        try:
            user_id = self._signed_in_user(environ)
            answer = self._answer(environ, user_id) if user_id is not None else None
        except Exception:
            # The view will answer (or fail) with the site's own error page.
            log.exception("the live region failed in front of Flask; the view answers")
            answer = None
        if answer is None:
            return self._downstream(environ, start_response)
        headers = answer.headers + [("Vary", "Cookie")]
        if answer.status == 200:  # a 304 has no body to measure
            headers.append(("Content-Length", str(len(answer.body))))
        start_secure_response(environ, start_response, answer.status, headers)
        return [answer.body]

    def _signed_in_user(self, environ: WSGIEnvironment) -> int | None:
        """The session's user id, if Flask-Login would take the session as it is; else ``None``.

        Every setting is read per request, as Flask and Flask-Login read them.
        """
        app = self._app
        # The cookie parser Flask's own ``request.cookies`` uses.
        cookies = parse_cookie(environ.get("HTTP_COOKIE", ""))
        cookie = cookies.get(app.session_interface.get_cookie_name(app))
        session = self._open_session(cookie) if cookie else None
        if session is None:
            return None
        if (
            session.get("_permanent")
            or "_remember" in session
            or app.config.get("REMEMBER_COOKIE_REFRESH_EACH_REQUEST")
        ):
            return None  # Flask would rewrite a cookie on the way out
        protection = app.config.get("SESSION_PROTECTION", login_manager.session_protection)
        if protection in ("basic", "strong") and session.get("_id") != session_identifier(
            environ.get("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR")),
            environ.get("HTTP_USER_AGENT"),
        ):
            return None  # Flask-Login marks or clears such a session
        user_id = session.get("_user_id")
        if not (isinstance(user_id, str) and user_id.isascii() and user_id.isdigit()):
            return None
        return int(user_id)

    def _open_session(self, cookie: str) -> dict[str, Any] | None:
        """The session in ``cookie`` if it is validly signed and not expired, as Flask opens it.

        Each open dashboard sends the same cookie with every poll, so a cookie
        verified once (signature, then decoding) is remembered, by its whole
        text, with the keys that verified it and when it was signed: until the
        keys change it is not verified again, but its age is checked against
        the session lifetime every time, as itsdangerous checks it.
        """
        serializer = self._serializer()
        if serializer is None:  # no secret key: Flask has no sessions either
            return None
        keys = self._signing[0]
        max_age = int(self._app.permanent_session_lifetime.total_seconds())
        verified = self._verified.get(cookie)
        if verified is None or verified.keys != keys:
            try:
                session, signed = serializer.loads(cookie, max_age=max_age, return_timestamp=True)
            except BadSignature:  # forged, or older than the session lifetime
                return None
            if not isinstance(session, dict):
                return None
            if len(self._verified) >= VERIFIED_SESSIONS:
                self._verified.clear()  # bounded; the next polls verify again
            verified = _VerifiedSession(keys, int(signed.timestamp()), session)
            self._verified[cookie] = verified
        age = int(time.time()) - verified.signed_at
        if age > max_age or age < 0:
            return None  # expired: the view signs it out
        return verified.session

    def _answer(self, environ: WSGIEnvironment, user_id: int) -> Answer | None:
        with self._engine.connect() as connection:
            try:
                status = current_usage_status(connection, user_id, clock.now())
            except UnknownUser:
                return None  # the view signs the deleted account out
        poll_url = environ.get("SCRIPT_NAME", "").rstrip("/") + PATH  # as Flask's script_root
        return live_region_answer(
            status,
            environ.get("HTTP_IF_NONE_MATCH"),
            lambda current: render_region(self._app.jinja_env, current, poll_url),
        )


def init_app(app: Flask) -> None:
    app.wsgi_app = LiveRegionEndpoint(app, app.wsgi_app)  # type: ignore[method-assign]
