"""``POST /api/v1/usage-events``: the one call the assistant makes for every suggestion.

Served by ``RecordEventEndpoint``, a WSGI layer in front of Flask, rather
than by a Flask view. Flask's request lifecycle (request and app contexts,
routing, the hooks every page needs, a ``Response`` object) costs about as
much CPU as parsing and recording the event itself: calling the WSGI app in
a loop in one process on PostgreSQL, the Flask view took 650-800 µs of CPU
per call, this layer 410-430 µs. This endpoint runs at the assistant's rate,
not a person's, so it goes without them.

It is not a second implementation of the API: admission (rate limit, bearer
key), body reading and validation, the error shape and the security headers
are the very functions the Flask blueprint uses, and the URL stays in
Flask's map (the ``405`` for other methods, the OpenAPI document), with a
view that refuses to run if this layer is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from flask import Flask
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_input_stream

from portal import clock
from portal.api import admission
from portal.api.errors import (
    ApiError,
    from_http_exception,
    server_failed,
    user_not_found,
    validation_error,
)
from portal.api.parsing import json_object, parse_usage_event
from portal.api.ratelimit import ApiRateLimit
from portal.apikeys import ApiKeyRevoked, forget_key, hash_key
from portal.extensions import db
from portal.usage import IdempotencyKeyReused, InvalidUsage, RecordResult, UnknownUser
from portal.usage.recording import record_request
from portal.views.security import start_secure_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

PATH = "/api/v1/usage-events"
EVENT_BODY_LIMIT = 64 * 1024
"""Bytes: an event with the largest metadata allowed, with room to spare."""

Answer = tuple[int, dict[str, Any]]


def json_body(document: Any) -> bytes:
    """A response body for ``document``: compact JSON in UTF-8 and a final newline.

    Written by orjson, UUIDs included, where the hot endpoints answer: for a
    batch's 1,000 results it took a twentieth of ``jsonify``'s time.
    """
    return orjson.dumps(document) + b"\n"


def record_event(session: Session, caller: admission.Admission, body: dict[str, Any]) -> Answer:
    """Record the event ``body`` describes, exactly once per idempotency key.

    201 with the event and the usage it leaves; 200 with the original answer
    for an idempotency key seen before. Refusals are raised as ``ApiError``:
    402 at a hard cap (nothing recorded), 404, 409, 422, and 401 for a
    remembered key revoked meanwhile.
    """
    at = clock.now()
    try:
        email, usage = parse_usage_event(body, at)
    except InvalidUsage as invalid:
        raise validation_error(invalid.errors) from None
    try:
        outcome = record_request(session, email, usage, at, api_key_id=caller.key.id)
    except ApiKeyRevoked:
        # Revoked since this process last looked it up: nothing was recorded.
        forget_key(hash_key(caller.presented))
        raise admission.unauthorized() from None
    except UnknownUser:
        raise user_not_found() from None
    except IdempotencyKeyReused as reused:
        raise ApiError(
            409, "idempotency_key_reused", str(reused), {"idempotency_key": "used before"}
        ) from None
    status = outcome.status  # record_request has committed
    if outcome.result is RecordResult.LIMIT_REACHED:
        raise ApiError(
            402,
            "limit_reached",
            f"The {status.plan.name} plan's {status.included} suggestions for this period are "
            f"used up; it resets on {status.period.end.date().isoformat()}. Nothing was recorded.",
        )
    duplicate = outcome.result is RecordResult.DUPLICATE
    document = {
        "event_id": str(outcome.event_id),
        "usage": status.as_dict(),
        "duplicate": duplicate,
    }
    return (200 if duplicate else 201), document


class RecordEventEndpoint:
    """WSGI middleware: answers ``POST`` to ``PATH`` itself and passes every other request on."""

    def __init__(self, app: Flask, downstream: WSGIApplication) -> None:
        with app.app_context():
            self._engine = db.engine
        self._rate_limit: ApiRateLimit = app.extensions["api_rate_limit"]
        self._downstream = downstream

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self._downstream(environ, start_response)
        status, headers, document = self._answer(environ)
        body = json_body(document)
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_secure_response(environ, start_response, status, headers)
        return [body]

    def _answer(self, environ: WSGIEnvironment) -> tuple[int, list[tuple[str, str]], Any]:
        session = Session(self._engine)
        try:
            status, document = self._serve(session, environ)
            return status, [], document
        except ApiError as refusal:
            return refusal.status, list(refusal.headers.items()), refusal.document
        except Exception:
            log.exception("unexpected error answering POST %s", PATH)
            failed = server_failed()
            return failed.status, [], failed.document
        finally:
            session.close()  # rolls back whatever a refused or failed request began

    def _serve(self, session: Session, environ: WSGIEnvironment) -> Answer:
        caller = admission.admit(
            session,
            self._rate_limit,
            environ.get("HTTP_AUTHORIZATION", ""),
            environ.get("REMOTE_ADDR"),
            clock.now(),
            # The recording statement checks that the key is still live.
            remembered=True,
        )
        try:
            body = json_object(_mimetype(environ), lambda: _read_body(environ))
            return record_event(session, caller, body)
        except ApiError as refusal:
            session.rollback()
            raise caller.refusal(session, refusal, clock.now()) from None


def _mimetype(environ: WSGIEnvironment) -> str:
    content_type: str = environ.get("CONTENT_TYPE", "")
    return content_type.partition(";")[0].strip().lower()


def _read_body(environ: WSGIEnvironment) -> bytes:
    try:
        return get_input_stream(environ, max_content_length=EVENT_BODY_LIMIT).read()
    except HTTPException as too_large:  # 413 past EVENT_BODY_LIMIT
        raise from_http_exception(too_large) from None


def served_in_front_of_flask() -> NoReturn:
    """The Flask view of ``PATH``: never runs while ``RecordEventEndpoint`` is installed."""
    raise RuntimeError(f"POST {PATH} is answered by RecordEventEndpoint, which is not installed")
