"""The polled live region (``/usage/current``) and the signed-in user behind every page.

Pages load the signed-in user with one small statement, and the pages with
the usage bar load the user and the usage together in one, instead of the
ORM; these tests hold both to what ``check_usage`` and the accounts table
say, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import jinja2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Connection, delete, event
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.models import User
from portal.usage import UnknownUser, UsageStatus, check_usage, record_usage
from portal.usage.status import current_usage_status
from portal.views.security import session_identifier
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD

SignIn = Callable[[str], FlaskClient]

T0 = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
"""An anchor on the 31st: periods end on Feb 28, Mar 31, Apr 30 …"""


def use(session: Session, user_id: int, quantity: int, at: datetime) -> None:
    record_usage(session, user_id, idempotency_key=f"{user_id}-{at}", now=at, quantity=quantity)
    session.commit()


@contextmanager
def autocommit_connection() -> Iterator[Connection]:
    """A connection like the one requests read through: no transaction around statements."""
    with db.engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def both_ways(session: Session, user_id: int, at: datetime) -> tuple[UsageStatus, UsageStatus]:
    with autocommit_connection() as connection:
        single = current_usage_status(connection, user_id, at)
    return single, check_usage(session, user_id, at)


def test_single_statement_matches_check_usage_across_period_boundaries(session: Session) -> None:
    user = make_user(session, plan="pro", anchor=T0)
    use(session, user.id, 7, T0 + timedelta(days=3))  # Jan 31 – Feb 28
    use(session, user.id, 11, datetime(2026, 2, 28, 9, 30, tzinfo=UTC))  # exactly the next start
    use(session, user.id, 2, datetime(2026, 3, 30, 23, 0, tzinfo=UTC))
    moments = [
        T0,
        T0 + timedelta(days=3, hours=1),
        datetime(2026, 2, 28, 9, 29, 59, 999999, tzinfo=UTC),  # last instant of period one
        datetime(2026, 2, 28, 9, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 9, 29, tzinfo=UTC),
        datetime(2026, 3, 31, 9, 30, tzinfo=UTC),  # a new period, nothing used yet
        datetime(2026, 6, 1, tzinfo=UTC),
    ]
    seen = []
    for moment in moments:
        single, reference = both_ways(session, user.id, moment)
        assert single == reference
        seen.append(single.used)
    # Running totals per period: the one containing each moment, whenever it was used.
    assert seen == [7, 7, 7, 13, 13, 0, 0]


def test_single_statement_matches_check_usage_for_every_kind_of_subject(
    session: Session,
) -> None:
    at = T0 + timedelta(days=10)
    org = make_org(session, plan="team", seats=3, anchor=T0 - timedelta(days=40))
    member = make_user(session, org=org)
    teammate = make_user(session, org=org)
    idle_member = make_user(session, org=org)
    # An individual paid plan wins over a live membership.
    paying_member = make_user(session, plan="starter", org=org, anchor=T0)
    free = make_user(session)
    session.commit()
    use(session, member.id, 4, at - timedelta(days=1))
    use(session, teammate.id, 9, at - timedelta(hours=1))
    use(session, paying_member.id, 3, at - timedelta(hours=2))
    use(session, free.id, 2, at - timedelta(hours=3))
    use(session, member.id, 5, at - timedelta(days=35))  # the org's previous period

    for user in (member, teammate, idle_member, paying_member, free):
        single, reference = both_ways(session, user.id, at)
        assert single == reference, user.email
    member_status, _ = both_ways(session, member.id, at)
    assert (member_status.used, member_status.member_used) == (13, 4)
    idle_status, _ = both_ways(session, idle_member.id, at)
    assert (idle_status.used, idle_status.member_used) == (13, 0)
    paying_status, _ = both_ways(session, paying_member.id, at)
    assert (paying_status.plan.id, paying_status.used, paying_status.member_used) == (
        "starter",
        3,
        None,
    )


def test_single_statement_refuses_an_unknown_user(session: Session) -> None:
    with autocommit_connection() as connection, pytest.raises(UnknownUser):
        current_usage_status(connection, 987654, T0)


def test_live_region_shows_the_numbers_check_usage_gives(
    session: Session, signed_in: SignIn
) -> None:
    now = datetime.now(UTC)
    org = make_org(session, plan="team", seats=2, anchor=now - timedelta(days=3))
    alice = make_user(session, org=org, password=PASSWORD)
    bob = make_user(session, org=org)
    session.commit()
    use(session, alice.id, 30, now)
    use(session, bob.id, 42, now)
    expected = check_usage(session, alice.id, datetime.now(UTC)).as_dict()

    html = re.sub(r"\s+", " ", signed_in(alice.email).get("/usage/current").get_data(as_text=True))

    assert f'<strong data-testid="used">{expected["used"]}</strong> of 100' in html
    assert expected["used"] == 72 and expected["member_used"] == 30
    assert f'<span data-testid="percent">{expected["percent"]}</span>%' in html
    assert f'<span data-testid="remaining">{expected["remaining"]}</span> remaining' in html
    assert f"Your share of the pool: <strong>{expected['member_used']}</strong>" in html
    assert f'data-testid="projected">{expected["projected_used"]:,}<' in html


def test_unchanged_region_answers_304_without_rendering(
    session: Session, signed_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    etag = client.get("/usage/current").headers["ETag"]
    rendered: list[str] = []
    render = jinja2.Template.render

    def record(template: jinja2.Template, *args: Any, **kwargs: Any) -> str:
        rendered.append(str(template.name))
        return render(template, *args, **kwargs)

    monkeypatch.setattr(jinja2.Template, "render", record)
    again = client.get("/usage/current", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and rendered == []
    assert again.headers["ETag"] == etag and again.headers["Cache-Control"] == "private, no-cache"
    assert again.headers["Content-Security-Policy"]  # security headers on every answer


def test_pages_show_the_signed_in_email(session: Session, signed_in: SignIn) -> None:
    user = make_user(session, email="grace@example.com", password=PASSWORD)
    session.commit()
    html = signed_in(user.email).get("/usage/history").get_data(as_text=True)
    assert "Signed in as grace@example.com" in html


def test_deleted_account_is_signed_out_on_its_next_request(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, email="gone@example.com", password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    assert client.get("/usage/current").status_code == 200

    session.execute(delete(User).where(User.id == user.id))
    session.commit()

    poll = client.get("/usage/current", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"
    assert b"<section" not in poll.data
    for path in ("/usage", "/usage/history"):
        page = client.get(path)
        assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=")


@contextmanager
def statements_sent() -> Iterator[list[str]]:
    """Every statement sent to the database meanwhile, through SQLAlchemy or not.

    On PostgreSQL the hot reads go straight to the driver's cursor, which
    SQLAlchemy's events don't see, so the driver's cursors are counted there.
    """
    seen: list[str] = []
    engine = db.engine
    if engine.dialect.name != "postgresql":

        def before(*args: Any) -> None:
            seen.append(args[2])

        event.listen(engine, "before_cursor_execute", before)
        try:
            yield seen
        finally:
            event.remove(engine, "before_cursor_execute", before)
        return

    import psycopg

    class CountingCursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(str(query))
            result = super().execute(query, *args, **kwargs)
            # A lone read is a transaction of its own: none is left open for a
            # ROLLBACK round trip when the connection goes back to the pool.
            if self.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                seen.append("(left a transaction open)")
            return result

    def checkout(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.cursor_factory = CountingCursor

    def checkin(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.cursor_factory = psycopg.Cursor

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", checkout)
        event.remove(engine, "checkin", checkin)


def test_a_poll_reads_the_user_and_the_usage_in_one_statement(
    session: Session, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2)
    user = make_user(session, org=org, password=PASSWORD)
    session.commit()
    client = signed_in(user.email)
    client.get("/usage/current")  # the first request of a client may set up more
    etag = client.get("/usage/current").headers["ETag"]

    with statements_sent() as fresh:
        assert client.get("/usage/current").status_code == 200
    with statements_sent() as unchanged:
        assert client.get("/usage/current", headers={"If-None-Match": etag}).status_code == 304
    assert (len(fresh), len(unchanged)) == (1, 1), (fresh, unchanged)


# The layer in front of Flask (``portal.views.live_region``): it answers the
# common poll itself, exactly as the view would, and leaves every other case to
# the view.


@contextmanager
def view_calls(app: Flask) -> Iterator[list[str]]:
    """The paths the Flask view of ``/usage/current`` answered meanwhile."""
    calls: list[str] = []
    view = app.view_functions["usage.current"]

    def counted(*args: Any, **kwargs: Any) -> Any:
        from flask import request

        calls.append(request.path)
        return view(*args, **kwargs)

    app.view_functions["usage.current"] = counted
    try:
        yield calls
    finally:
        app.view_functions["usage.current"] = view


def a_pro_user_signed_in(session: Session, signed_in: SignIn) -> tuple[User, FlaskClient]:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    return user, signed_in(user.email)


def assert_the_view_signs_the_poll_out(app: Flask, client: FlaskClient) -> None:
    """The layer left the poll to the view, which sent the browser to /login."""
    with view_calls(app) as calls:
        poll = client.get("/usage/current", headers={"HX-Request": "true"})
    assert calls == ["/usage/current"]
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"


def assert_same_answer(layer: Any, view: Any) -> None:
    assert layer.status_code == view.status_code
    assert sorted(layer.headers.items()) == sorted(view.headers.items())
    assert layer.data == view.data


def flask_alone(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the test client reaches Flask itself, without any layer in front of it."""
    monkeypatch.setattr(app, "wsgi_app", partial(Flask.wsgi_app, app))


@pytest.mark.parametrize(
    ("where", "script_root"),
    [
        ({}, ""),
        ({"base_url": "http://localhost/portal"}, "/portal"),
        # Mounted with a trailing slash: Flask's links drop it.
        ({"environ_overrides": {"SCRIPT_NAME": "/portal/"}}, "/portal"),
    ],
)
def test_the_layer_answers_a_poll_byte_for_byte_as_the_view_would(
    app: Flask,
    session: Session,
    signed_in: SignIn,
    monkeypatch: pytest.MonkeyPatch,
    where: dict[str, Any],
    script_root: str,
) -> None:
    org = make_org(session, plan="team", seats=2)
    user = make_user(session, org=org, password=PASSWORD)
    session.commit()
    use(session, user.id, 81, datetime.now(UTC))  # a warning: the alert is rendered too
    client = signed_in(user.email)
    environ = where

    with view_calls(app) as calls:
        fresh = client.get("/usage/current", **environ)
        etag = fresh.headers["ETag"]
        unchanged = client.get("/usage/current", headers={"If-None-Match": etag}, **environ)
    assert calls == [], "the layer in front of Flask should have answered both polls"
    assert fresh.status_code == 200 and unchanged.status_code == 304
    assert f'hx-get="{script_root}/usage/current"' in fresh.get_data(as_text=True)
    assert "Set-Cookie" not in fresh.headers

    flask_alone(app, monkeypatch)
    with view_calls(app) as calls:
        by_view = client.get("/usage/current", **environ)
        unchanged_by_view = client.get("/usage/current", headers={"If-None-Match": etag}, **environ)
    assert len(calls) == 2
    assert_same_answer(fresh, by_view)
    assert_same_answer(unchanged, unchanged_by_view)


@pytest.mark.parametrize(
    "case",
    ["no cookie", "forged cookie", "another browser", "another address", "HEAD"],
)
def test_the_view_answers_what_the_layer_does_not_take(
    app: Flask, session: Session, signed_in: SignIn, case: str
) -> None:
    _, client = a_pro_user_signed_in(session, signed_in)
    # The layer has verified (and remembers) the genuine cookie.
    assert client.get("/usage/current").status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    headers = {"HX-Request": "true"}
    method = "GET"
    if case == "no cookie":
        client.delete_cookie("session")
    elif case == "forged cookie":
        client.set_cookie(
            "session", cookie.value[:-2] + ("AA" if cookie.value[-2:] != "AA" else "BB")
        )
    elif case == "another browser":
        headers["User-Agent"] = "Another/1.0"
    elif case == "another address":
        headers["X-Forwarded-For"] = "203.0.113.9"
    else:
        method = "HEAD"

    with view_calls(app) as calls:
        poll = client.open("/usage/current", method=method, headers=headers)
    assert calls == ["/usage/current"]
    if case in ("no cookie", "forged cookie"):
        assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"
    elif case == "HEAD":
        assert poll.status_code == 200 and poll.data == b""
    else:
        # Session protection ("basic") keeps the user signed in but marks the
        # session no longer fresh, which rewrites the cookie: the view's work.
        assert poll.status_code == 200 and "Set-Cookie" in poll.headers
        assert b'data-testid="used"' in poll.data


def test_a_deleted_account_is_left_to_the_view(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    user, client = a_pro_user_signed_in(session, signed_in)
    session.execute(delete(User).where(User.id == user.id))
    session.commit()
    assert_the_view_signs_the_poll_out(app, client)


def test_a_cookie_that_is_not_utf8_is_passed_over_as_flask_passes_it_over(
    app: Flask, session: Session, signed_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another application's cookie on the domain, in Latin-1, must not break the poll."""
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    signed_in_cookie = signed_in(user.email).get_cookie("session")
    assert signed_in_cookie is not None
    client = app.test_client(use_cookies=False)  # sends the Cookie header as given
    headers = {"Cookie": f"other-app=caf\xe9; session={signed_in_cookie.value}"}

    with view_calls(app) as calls:
        by_layer = client.get("/usage/current", headers=headers)
    assert calls == [] and by_layer.status_code == 200
    flask_alone(app, monkeypatch)
    by_view = client.get("/usage/current", headers=headers)
    assert_same_answer(by_layer, by_view)


def test_a_secret_key_rotated_at_run_time_signs_old_sessions_out(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    _, client = a_pro_user_signed_in(session, signed_in)
    assert client.get("/usage/current").status_code == 200

    app.config["SECRET_KEY"] = "a new secret key, the old one leaked"
    assert_the_view_signs_the_poll_out(app, client)


def test_a_session_verified_once_is_not_verified_again_but_still_expires(
    app: Flask, session: Session, signed_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = a_pro_user_signed_in(session, signed_in)
    verifications: list[str] = []
    loads = URLSafeTimedSerializer.loads

    def counted(serializer: URLSafeTimedSerializer, *args: Any, **kwargs: Any) -> Any:
        verifications.append("loads")
        return loads(serializer, *args, **kwargs)

    monkeypatch.setattr(URLSafeTimedSerializer, "loads", counted)
    with view_calls(app) as calls:
        for _ in range(3):
            assert client.get("/usage/current").status_code == 200
    assert calls == [] and verifications == ["loads"]

    # Sessions now last less than their age: the remembered one has expired too.
    app.permanent_session_lifetime = timedelta(seconds=-1)
    assert_the_view_signs_the_poll_out(app, client)


def test_a_failure_in_front_of_flask_is_logged_and_the_view_answers(
    app: Flask,
    session: Session,
    signed_in: SignIn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD)
    session.commit()
    use(session, user.id, 5, datetime.now(UTC))
    client = signed_in(user.email)

    def broken(*args: object) -> UsageStatus:
        raise RuntimeError("the layer broke")

    monkeypatch.setattr("portal.views.live_region.current_usage_status", broken)
    with view_calls(app) as calls, caplog.at_level("ERROR", logger="portal.views.live_region"):
        poll = client.get("/usage/current")
    assert calls == ["/usage/current"]
    assert poll.status_code == 200 and b'<strong data-testid="used">5</strong>' in poll.data
    assert [record.exc_info[1] for record in caplog.records if record.exc_info] != []
    assert "the layer broke" in caplog.text


@pytest.mark.parametrize(
    ("forwarded_for", "remote_addr", "user_agent"),
    [
        (None, "127.0.0.1", "Mozilla/5.0"),
        ("203.0.113.7, 10.0.0.1", "10.0.0.1", "Mozilla/5.0"),
        (None, "::1", None),
        ("  198.51.100.2  ", "127.0.0.1", "Agent/1 (\xe9t\xe9)"),
    ],
)
def test_sessions_are_bound_to_the_client_as_flask_login_binds_them(
    app: Flask, forwarded_for: str | None, remote_addr: str, user_agent: str | None
) -> None:
    """Sessions signed in under Flask-Login's own identifier stay valid, in the layer too."""
    from flask_login.utils import _create_identifier

    headers = {
        name: value
        for name, value in (("X-Forwarded-For", forwarded_for), ("User-Agent", user_agent))
        if value is not None
    }
    with app.test_request_context(headers=headers, environ_base={"REMOTE_ADDR": remote_addr}):
        from flask import request

        assert (
            session_identifier(
                request.environ.get("HTTP_X_FORWARDED_FOR", request.environ["REMOTE_ADDR"]),
                request.environ.get("HTTP_USER_AGENT"),
            )
            == _create_identifier()
        )
