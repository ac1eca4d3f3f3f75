"""Real servers for the notification tests: an SMTP server (aiosmtpd) and an HTTP receiver."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask

WEBHOOK_SECRET = "a webhook secret of the assistant's backend"
SENDER = "AI suggestions <usage@portal.example>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Mailbox:
    """What the SMTP server accepted; ``refuse`` answers the next messages with that reply."""

    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    """The envelope's addresses, as the server took them (UTF-8 with SMTPUTF8)."""
    contents: list[bytes] = field(default_factory=list)
    """Each message as it went over the wire."""
    refuse: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.refuse:
                return self.refuse.pop(0)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)  # type: ignore[arg-type]
            self.contents.append(envelope.original_content or envelope.content)
            self.recipients.extend(envelope.rcpt_tos)
        return "250 2.0.0 OK"

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.messages]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Receiver:
    """The assistant's backend: it records each request, and dedupes on the event id."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    """Statuses for the next requests; 200 once they run out."""

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    def events(self) -> dict[str, dict[str, Any]]:
        """What a receiver that dedupes on ``id`` keeps."""
        return {body["id"]: body for body in self.bodies()}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                received.requests.append((dict(self.headers.items()), body))
                status = received.answers.pop(0) if received.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the test reads ``received`` instead

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/usage"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def notifying_app(app: Flask, mailbox: Mailbox, receiver: Receiver) -> Flask:
    """The portal with both channels pointed at the servers above."""
    app.config.update(
        SMTP_URL=f"smtp://127.0.0.1:{mailbox.port}",
        MAIL_FROM=SENDER,
        NOTIFY_WEBHOOK_URL=receiver.url,
        NOTIFY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        PORTAL_BASE_URL="https://usage.example.com",
    )
    return app


def verify_signature(secret: str, body: bytes, header: str, now: int, tolerance: int = 300) -> bool:
    """The receiver's check, as docs/operations.md tells the assistant's team to write it."""
    parts = [item.strip().split("=", 1) for item in header.split(",") if "=" in item]
    timestamps = [value for key, value in parts if key == "t"]
    signatures = [value for key, value in parts if key == "v1"]
    if len(timestamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", timestamps[0]):
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return any(hmac.compare_digest(expected.hexdigest(), candidate) for candidate in signatures)
