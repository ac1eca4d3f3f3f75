"""The portal's WSGI app on gunicorn's asyncio worker, one request at a time per process.

Production runs ``gunicorn --config gunicorn_config.py``: gunicorn's ``asgi``
worker, whose event loop (uvloop) keeps idle keep-alive connections and
parses requests, runs the app through ``EventLoopWSGI``,
which calls it in the loop's own thread. Each worker process therefore
answers one request at a time, as gunicorn's ``sync`` worker does, while a
slow client or an idle keep-alive connection costs it nothing.

Why not the ``gthread`` worker: every request there passes from the
worker's main thread to a pool thread and back, and the threads take turns
on the GIL. On the two cores this was measured on, two fifths of a
worker's time holding the GIL went to gunicorn's thread machinery (py-spy),
with dozens of futex calls a request (strace); it answered fewer single
events a second than this adapter in 11 of 15 ``make bench`` runs over
three machines (README, Benchmarks). The price: connections stay with the
worker that accepted them, so a few busy persistent connections on one
worker queue behind each other, which shows in the live region's p99 under
wrk. Why not an off-the-shelf ASGI-to-WSGI adapter: they run the app in a
thread pool, which brings the hand-offs back.

Because the app runs in the loop's thread, it cannot wait on the loop for
its request body: the body is read whole first, up to ``max_body`` bytes,
and handed to the app with its length, however it was framed on the wire
(a chunked body arrives de-chunked, as a buffering proxy passes it on). A
body declared longer is not read, and a chunked one only up to a byte past
the limit: the app is told its length and refuses it with ``413`` unread,
as any over-long body, and gunicorn closes the connection instead of
reading the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class EventLoopWSGI:
    """An ASGI application that runs the WSGI application ``app`` in the event loop's thread."""

    def __init__(self, app: WSGIApplication, max_body: int) -> None:
        if max_body < 0:
            raise ValueError(f"max_body must be 0 or more bytes, got {max_body}")
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            # The portal speaks no WebSocket: refuse the handshake (the server answers 403).
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(scope, receive)
        if body is None:
            return  # the client went away before sending its whole request: nobody to answer
        response = _Response()
        chunks = self.app(wsgi_environ(scope, body), response.start_response)
        try:
            for chunk in chunks:
                if chunk:
                    await response.send_body(send, chunk)
            await response.finish(send)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # PEP 3333: always, even when sending failed

    async def _read_body(self, scope: Scope, receive: Receive) -> _Body | None:
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body:
            return _Body(b"", declared)
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        # Past the limit, the length alone makes the app refuse the body unread.
        return _Body(b"".join(chunks), max(size, declared or 0))


@dataclass(frozen=True)
class _Body:
    """What the adapter read of a request body, and the length the app is told it has."""

    data: bytes
    length: int
    """``len(data)``, unless the body is longer than the limit and was not read whole."""


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            # gunicorn has already refused a malformed or repeated Content-Length.
            return int(value)
    return None


_REFRAMED = ("CONTENT_LENGTH", "TRANSFER_ENCODING")
"""Headers about the body's framing on the wire, replaced by ``CONTENT_LENGTH``."""


def wsgi_environ(scope: Scope, body: _Body) -> WSGIEnvironment:
    """The PEP 3333 environ of the HTTP request ``scope``, with ``body`` as its input."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        # As in gunicorn's WSGI workers: the percent-decoded bytes, as latin-1.
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": BytesIO(body.data),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # The body is read already, so the app gets it as one of known length,
        # however it was framed on the wire (as a buffering proxy passes it on).
        "CONTENT_LENGTH": str(body.length),
    }
    if client is not None:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name in _REFRAMED:
            continue
        key = name if name == "CONTENT_TYPE" else f"HTTP_{name}"
        if key in environ:
            # A header sent twice is one list; cookies have their own separator.
            value = f"{environ[key]}{'; ' if key == 'HTTP_COOKIE' else ','}{value}"
        environ[key] = value
    return environ


class _Response:
    """PEP 3333's ``start_response`` and ``write``, sent as ASGI messages."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False
        """Whether the status and headers have gone to the client."""
        self.written: list[bytes] = []
        """What the app passed to ``write``, not yet sent."""

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[1] is not None:
            if self.started:
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status is not None:
            raise RuntimeError("start_response was called twice without exc_info")
        self.status = int(status.split(" ", 1)[0])
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        return self.written.append

    async def send_body(self, send: Send, chunk: bytes) -> None:
        await self._start(send)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def finish(self, send: Send) -> None:
        await self._start(send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start(self, send: Send) -> None:
        if self.status is None:
            raise RuntimeError("the WSGI application returned before calling start_response")
        if not self.started:
            self.started = True
            start = {"type": "http.response.start", "status": self.status, "headers": self.headers}
            await send(start)
        while self.written:
            chunk = self.written.pop(0)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to set up or tear down: each worker's app is built as gunicorn loads it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
