"""The portal on gunicorn's asgi worker (``portal.serving``, ``gunicorn_config.py``).

The adapter is driven directly with ASGI messages, as gunicorn sends them, and
the production set-up is started for real: ``gunicorn --config
gunicorn_config.py`` on the test database of each engine.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.processes import free_port, stop_server
from portal.apikeys import create_api_key
from portal.config import MAX_REQUEST_BODY
from portal.models import UsageEvent
from portal.serving import EventLoopWSGI
from tests.factories import make_user

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LIMIT = 100


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    raw_path: bytes | None = None,
    query: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "server": ("127.0.0.1", 8000),
        "client": ("10.0.0.7", 51234),
    }


class Exchange:
    """One request through the adapter: what the app saw, and what went to the client."""

    def __init__(self, body_messages: list[dict[str, Any]] | None = None) -> None:
        self.incoming = list(body_messages or [{"type": "http.request", "body": b""}])
        self.received = 0
        self.sent: list[dict[str, Any]] = []
        self.environ: dict[str, Any] | None = None
        self.body_seen: bytes | None = None

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        return self.incoming.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def echo_app(exchange: Exchange, status: str = "200 OK") -> Any:
    """A WSGI app that records its environ and body and answers with the body."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        exchange.environ = environ
        exchange.body_seen = environ["wsgi.input"].read()
        start_response(status, [("Content-Type", "text/plain")])
        return [exchange.body_seen]

    return app


def run_async(coroutine: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` in a thread of its own: the browser tests' Playwright keeps an
    event loop running in the test thread, and asyncio refuses to nest loops."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, coroutine).result()


def run(adapter: EventLoopWSGI, scope: dict[str, Any], exchange: Exchange) -> None:
    run_async(adapter(scope, exchange.receive, exchange.send))


def test_the_app_sees_the_request_as_a_wsgi_server_would_give_it() -> None:
    exchange = Exchange()
    scope = http_scope(
        "/api/v1/users/ada@example.com/usage",
        raw_path=b"/api/v1/users/ada%40example.com/caf%C3%A9",
        query=b"period=2026-11&x=%20",
        headers=[
            (b"host", b"portal.example"),
            (b"content-type", b"application/json"),
            (b"accept", b"text/html"),
            (b"accept", b"application/json"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x-forwarded-for", b"203.0.113.9"),
        ],
    )
    run(EventLoopWSGI(echo_app(exchange), LIMIT), scope, exchange)
    environ = exchange.environ
    assert environ is not None
    # Percent-decoded, UTF-8 bytes as latin-1: what werkzeug decodes back to "café".
    assert environ["PATH_INFO"] == "/api/v1/users/ada@example.com/caf\xc3\xa9"
    assert environ["QUERY_STRING"] == "period=2026-11&x=%20"
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.7", "51234")
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == "portal.example"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"
    assert environ["CONTENT_LENGTH"] == "0"
    assert environ["wsgi.multithread"] is False


def test_a_body_in_several_messages_arrives_whole_with_its_length() -> None:
    exchange = Exchange(
        [
            {"type": "http.request", "body": b'{"a": ', "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b"1}", "more_body": False},
        ]
    )
    scope = http_scope("/echo", method="POST", headers=[(b"transfer-encoding", b"chunked")])
    run(EventLoopWSGI(echo_app(exchange), LIMIT), scope, exchange)
    assert exchange.body_seen == b'{"a": 1}'
    assert exchange.environ is not None
    # De-chunked: the app is told the length, and nothing about the wire's framing.
    assert exchange.environ["CONTENT_LENGTH"] == "8"
    assert "HTTP_TRANSFER_ENCODING" not in exchange.environ
    assert (exchange.status, exchange.body) == (200, b'{"a": 1}')


def test_a_body_declared_too_long_is_not_read_and_the_app_is_told_its_length() -> None:
    exchange = Exchange([{"type": "http.request", "body": b"x" * 50, "more_body": True}])
    scope = http_scope("/echo", method="POST", headers=[(b"content-length", b"5000")])
    run(EventLoopWSGI(echo_app(exchange), LIMIT), scope, exchange)
    assert exchange.received == 0
    assert exchange.environ is not None
    assert exchange.environ["CONTENT_LENGTH"] == "5000"


def test_a_chunked_body_past_the_limit_is_read_no_further() -> None:
    chunk = {"type": "http.request", "body": b"x" * 40, "more_body": True}
    exchange = Exchange([dict(chunk) for _ in range(10)])
    scope = http_scope("/echo", method="POST", headers=[(b"transfer-encoding", b"chunked")])
    run(EventLoopWSGI(echo_app(exchange), LIMIT), scope, exchange)
    assert exchange.received == 3  # 120 bytes: past the 100-byte limit
    assert exchange.environ is not None
    assert int(exchange.environ["CONTENT_LENGTH"]) > LIMIT


def test_a_client_gone_before_its_body_arrived_gets_nothing_and_the_app_does_not_run() -> None:
    exchange = Exchange(
        [
            {"type": "http.request", "body": b"{", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    run(EventLoopWSGI(echo_app(exchange), LIMIT), http_scope(method="POST"), exchange)
    assert exchange.environ is None
    assert exchange.sent == []


def test_a_streamed_response_goes_out_chunk_by_chunk_after_what_write_sent() -> None:
    closed = []

    class Chunks:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a,b\n"
            yield b""
            yield b"1,2\n"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Chunks:
        write = start_response("200 OK", [("Content-Type", "text/csv"), ("X-Rows", "1")])
        write(b"# header\n")
        return Chunks()

    exchange = Exchange()
    run(EventLoopWSGI(app, LIMIT), http_scope(), exchange)
    assert exchange.sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/csv"), (b"x-rows", b"1")],
    }
    assert [m["body"] for m in exchange.sent[1:]] == [b"# header\n", b"a,b\n", b"1,2\n", b""]
    assert [m["more_body"] for m in exchange.sent[1:]] == [True, True, True, False]
    assert closed == [True]


def test_the_response_is_closed_even_when_the_client_is_gone() -> None:
    closed = []

    class Chunks:
        def __iter__(self) -> Iterator[bytes]:
            yield b"partial"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Chunks:
        start_response("200 OK", [])
        return Chunks()

    async def send(message: dict[str, Any]) -> None:
        raise ConnectionResetError("client went away")

    exchange = Exchange()
    with pytest.raises(ConnectionResetError):
        run_async(EventLoopWSGI(app, LIMIT)(http_scope(), exchange.receive, send))
    assert closed == [True]


def test_an_error_page_may_replace_headers_not_yet_sent_but_not_ones_already_sent() -> None:
    def replaces(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("rendering failed")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error page"]

    exchange = Exchange()
    run(EventLoopWSGI(replaces, LIMIT), http_scope(), exchange)
    assert (exchange.status, exchange.sent[0]["headers"], exchange.body) == (500, [], b"error page")

    def too_late(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"started"
        try:
            raise ValueError("failed mid-stream")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    with pytest.raises(ValueError, match="failed mid-stream"):
        run(EventLoopWSGI(too_late, LIMIT), http_scope(), Exchange())

    def twice(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("204 No Content", [])
        return []

    with pytest.raises(RuntimeError, match="twice"):
        run(EventLoopWSGI(twice, LIMIT), http_scope(), Exchange())


def test_lifespan_is_acknowledged_and_websockets_are_refused() -> None:
    adapter = EventLoopWSGI(echo_app(Exchange()), LIMIT)
    lifespan = Exchange([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    run_async(adapter({"type": "lifespan"}, lifespan.receive, lifespan.send))
    assert [m["type"] for m in lifespan.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    socket_ = Exchange([{"type": "websocket.connect"}])
    run_async(adapter({"type": "websocket"}, socket_.receive, socket_.send))
    assert socket_.sent == [{"type": "websocket.close", "code": 1008}]


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body"):
        EventLoopWSGI(echo_app(Exchange()), -1)


# -- the production set-up, for real -----------------------------------------


def test_production_workers_take_their_start_up_objects_out_of_garbage_collection() -> None:
    spec = importlib.util.spec_from_file_location(
        "gunicorn_config", PROJECT_ROOT / "gunicorn_config.py"
    )
    assert spec is not None and spec.loader is not None
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    assert gc.get_freeze_count() == 0
    try:
        config.post_worker_init(object())  # gunicorn calls it once the app is loaded
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.fixture
def production_server(app: Flask, database_url: str, tmp_path: Path) -> Iterator[int]:
    """``gunicorn --config gunicorn_config.py`` on the test database, with two workers."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "PORTAL_ENV": "development",
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": "2",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn_config.py"]
            + ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "3"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not start:\n{log.read_text()}")
                time.sleep(0.1)
        yield port
    finally:
        stop_server(process, timeout=15, log=print)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_production_server_records_usage_over_one_kept_alive_connection(
    session: Session, production_server: int
) -> None:
    user = make_user(session, plan="pro", email="ada@example.com")
    _, key = create_api_key(session, "backend", datetime.now(UTC))
    session.commit()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", production_server, timeout=10)
    try:
        connection.request("GET", "/api/v1/users/ada%40example.com/usage", headers=auth)
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["used"]) == (200, 0)
        local_port = connection.sock.getsockname()[1]

        for attempt in range(2):  # the second is a retry: the original answer, nothing more
            event = {"user_email": user.email, "idempotency_key": "kept-alive-1"}
            connection.request("POST", "/api/v1/usage-events", json.dumps(event), auth)
            response = connection.getresponse()
            document = json.loads(response.read())
            assert response.status == (201 if attempt == 0 else 200)
            assert document["usage"]["used"] == 1
        # The same TCP connection answered all three.
        assert connection.sock.getsockname()[1] == local_port
    finally:
        connection.close()
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(UsageEvent)) == 1


def test_production_server_refuses_an_over_long_chunked_batch_with_413(
    session: Session, production_server: int
) -> None:
    _, key = create_api_key(session, "backend", datetime.now(UTC))
    session.commit()
    piece = b"x" * 65536
    pieces = MAX_REQUEST_BODY // len(piece) + 2
    with socket.create_connection(("127.0.0.1", production_server), timeout=10) as raw:
        raw.sendall(
            b"POST /api/v1/usage-events/batch HTTP/1.1\r\nHost: portal\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(pieces):
                raw.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            raw.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent
        response = http.client.HTTPResponse(raw)  # type: ignore[arg-type]
        response.begin()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "payload_too_large"
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(UsageEvent)) == 0


@pytest.mark.parametrize(
    ("content_length", "reason"),
    [
        ("abc", b"Invalid Content-Length value"),
        ("-1", b"Negative Content-Length"),
        ("2\r\nContent-Length: 2", b"Duplicate Content-Length header"),
    ],
)
def test_production_server_answers_a_malformed_content_length_with_400(
    production_server: int, content_length: str, reason: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", production_server), timeout=10) as raw:
        raw.sendall(
            b"POST /api/v1/usage-events HTTP/1.1\r\nHost: portal\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + content_length.encode() + b"\r\n\r\n{}"
        )
        response = http.client.HTTPResponse(raw)  # type: ignore[arg-type]
        response.begin()
        assert (response.status, response.reason.encode()) == (400, reason)
