"""The production command, ``gunicorn --config gunicorn_config.py --bind HOST:PORT``, as started
in production: what reaches the app, what is refused before it, and what it refuses to start
without."""

from __future__ import annotations

import gc
import os
import re
import runpy
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from portal import clock
from portal.apikeys import create_api_key
from portal.models import UsageEvent
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
SECRET = "a production secret key, long enough"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def production_environment(**settings: str) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PORTAL_", "SECRET_KEY", "DATABASE_URL", "TRUSTED_PROXIES"))
    }
    environment.update(PORTAL_ENV="production", **settings)
    return environment


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The production command on a free port, behind one trusted proxy hop."""
    port = free_port()
    process = subprocess.Popen(
        [
            GUNICORN,
            "--config",
            "gunicorn_config.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=production_environment(
            SECRET_KEY=SECRET, DATABASE_URL=database_url, TRUSTED_PROXIES="1"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while b"200 OK" not in exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n"):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "gunicorn did not answer"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def exchange(port: int, request: bytes, *, then: bytes = b"", timeout: float = 10) -> bytes:
    """Send ``request`` (then ``then``, if the server has not answered yet); the answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            connection.sendall(request)
            if then:
                try:
                    connection.sendall(then)
                except OSError:
                    pass  # the server answered and closed before taking it all
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            return answer
    except ConnectionRefusedError:
        return b""


def post(address: str, path: str, body: bytes, *headers: str) -> bytes:
    host, port = address.split(":")
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return exchange(int(port), ("\r\n".join(head) + "\r\n\r\n").encode() + body)


def test_headers_spelled_with_underscores_never_reach_the_app(server: str) -> None:
    # Failed API authentication is limited per client address (30 a minute).
    # Were X_Forwarded_For read as X-Forwarded-For, each request would come
    # from an address of its own and never be limited.
    answers = [
        post(
            server,
            "/api/v1/usage-events",
            b"{}",
            f"X_Forwarded_For: 198.51.100.{n}",
            "X_Forwarded_Proto: https",
        )
        for n in range(31)
    ]
    assert all(answer.startswith(b"HTTP/1.1 401") for answer in answers[:30])
    assert answers[30].startswith(b"HTTP/1.1 429")
    # Nor does the app believe it was reached over HTTPS.
    assert all(b"Strict-Transport-Security" not in answer for answer in answers)


def test_a_body_past_the_routes_limit_is_refused_before_it_is_read(
    server: str, session: Session
) -> None:
    user = make_user(session, plan="pro")
    _, key = create_api_key(session, "backend", clock.now())
    session.commit()
    host, port = server.split(":")
    head = (
        "POST /api/v1/usage-events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
    )
    # Declared too long: answered though most of it never comes (a server
    # waiting for it would let the socket time out, answering nothing).
    declared = exchange(
        int(port), (head + "Content-Length: 50000000\r\n\r\n").encode() + b"{" * 1000, timeout=20
    )
    assert declared.startswith(b"HTTP/1.1 413")
    # Chunked without a length: read up to the single event's 64 KiB, no further.
    chunk = b"{" * 16384
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))
    chunked = exchange(
        int(port),
        (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks,
        then=chunks * 600,  # about 50 MB more, were it read
        timeout=20,
    )
    assert chunked.startswith(b"HTTP/1.1 413")
    # A batch may be larger than one event, and is still limited.
    event = b'{"user_email": "%s", "idempotency_key": "batch-event-%08d", "quantity": 1}'
    batch = (
        b'{"events": [' + b",".join(event % (user.email.encode(), n) for n in range(1000)) + b"]}"
    )
    assert len(batch) > 64 * 1024
    accepted = post(server, "/api/v1/usage-events/batch", batch, f"Authorization: Bearer {key}")
    assert accepted.startswith(b"HTTP/1.1 200")
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(UsageEvent)) == 1000


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("SECRET_KEY", "SECRET_KEY is required to serve pages in production"),
        ("DATABASE_URL", "DATABASE_URL is required to serve in production"),
    ],
)
def test_production_refuses_to_start_without_what_serving_needs(
    database_url: str, missing: str, message: str
) -> None:
    settings = {"SECRET_KEY": SECRET, "DATABASE_URL": database_url}
    del settings[missing]
    started = subprocess.run(
        [GUNICORN, "--config", "gunicorn_config.py", "--bind", f"127.0.0.1:{free_port()}"],
        cwd=ROOT,
        env=production_environment(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert f"configuration error: {message}" in started.stderr


@pytest.mark.parametrize(
    ("workers", "storage", "warned"),
    [(5, "", True), (5, "memory://", True), (1, "", False), (5, "redis://127.0.0.1:6379/0", False)],
)
def test_production_warns_when_each_worker_would_count_the_limits_alone(
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    storage: str,
    warned: bool,
) -> None:
    """Five workers each counting in memory would let a client try five times as many passwords."""
    environment = production_environment(
        SECRET_KEY=SECRET, DATABASE_URL=database_url, RATE_LIMIT_STORAGE_URL=storage
    )
    monkeypatch.setattr(os, "environ", environment)
    config = runpy.run_path(str(ROOT / "gunicorn_config.py"))
    gunicorn_config = Config()
    gunicorn_config.set("workers", workers)
    config["on_starting"](SimpleNamespace(cfg=gunicorn_config))
    warning = f"up to {workers} times each limit (sign-in attempts included)"
    assert (warning in capsys.readouterr().err) is warned


def test_production_workers_take_their_start_up_objects_out_of_garbage_collection() -> None:
    config = runpy.run_path(str(ROOT / "gunicorn_config.py"))
    gc.unfreeze()
    try:
        config["post_worker_init"](object())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("content_length", ["abc", "-1", "2\r\nContent-Length: 2"])
def test_a_malformed_content_length_gets_400(server: str, content_length: str) -> None:
    host, port = server.split(":")
    answer = exchange(
        int(port),
        b"POST /api/v1/usage-events HTTP/1.1\r\nHost: portal\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + content_length.encode() + b"\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 400")


def test_an_export_that_breaks_off_is_a_broken_transfer_not_a_short_file(
    server: str, session: Session
) -> None:
    import requests

    org = make_org(session, plan="team", seats=10)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    session.commit()
    # 20,000 members: far more than the sockets between server and client hold.
    session.execute(
        text(
            "WITH made AS (INSERT INTO users (email, display_name, created_at) "
            "SELECT 'member' || n || '@example.com', 'Member ' || n, now() "
            "FROM generate_series(1, 20000) AS n RETURNING id) "
            "INSERT INTO memberships (user_id, organization_id, role, created_at) "
            "SELECT id, :org, 'member', now() FROM made"
        ),
        {"org": org.id},
    )
    session.commit()
    # Production's session cookie is Secure: a client over plain HTTP sends it back by hand.
    base = f"http://{server}"
    form = requests.get(f"{base}/login")
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form.text)
    assert token is not None
    signed_in = requests.post(
        f"{base}/login",
        data={"csrf_token": token.group(1), "email": admin.email, "password": PASSWORD},
        headers={"Cookie": f"session={form.cookies['session']}"},
        allow_redirects=False,
    )
    assert signed_in.status_code == 302
    cookie = {"Cookie": f"session={signed_in.cookies['session']}"}

    export = requests.get(f"{base}/orgs/{org.slug}/usage.csv", headers=cookie, stream=True)
    assert export.status_code == 200 and "Content-Length" not in export.headers
    chunks = export.iter_content(16384)
    received = next(chunks)
    # The database goes away while the file streams.
    session.execute(
        text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )
    session.rollback()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in chunks:
            received += chunk
    assert received.count(b"\n") < 20_002  # the header, the admin and 20,000 members
