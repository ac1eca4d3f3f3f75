from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from portal import clock
from portal.apikeys import create_api_key, revoke_api_key
from portal.headers import CONTENT_SECURITY_POLICY
from portal.models import ApiKey, UsageEvent, UsageRecord
from portal.usage import recording
from tests.factories import make_org, make_user

Api = Any


def now() -> datetime:
    return clock.now()


def recorded(session: Session) -> tuple[int, int]:
    session.expire_all()
    return (
        session.scalar(select(func.count()).select_from(UsageEvent)) or 0,
        session.scalar(select(func.coalesce(func.sum(UsageRecord.used), 0))) or 0,
    )


def event(email: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"user_email": email, "idempotency_key": key or uuid.uuid4().hex, **fields}


def free_user(session: Session) -> str:
    user = make_user(session, anchor=now() - timedelta(days=40))
    session.commit()
    return user.email


def pro_user(session: Session) -> str:
    user = make_user(session, plan="pro", anchor=now() - timedelta(days=3))
    session.commit()
    return user.email


# Authentication


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer usk_" + "A" * 43],
)
def test_missing_malformed_or_unknown_keys_get_401_and_nothing_happens(
    app: Flask, session: Session, header: str | None
) -> None:
    email = pro_user(session)
    headers = {"Authorization": header} if header else {}
    response = app.test_client().post("/api/v1/usage-events", json=event(email), headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert recorded(session) == (0, 0)


def test_revoked_key_is_refused_at_once(app: Flask, session: Session, api: Api) -> None:
    email = pro_user(session)
    assert api("get", f"/users/{email}/usage").status_code == 200
    revoke_api_key(session, "test-backend", now())
    session.commit()
    assert api("get", f"/users/{email}/usage").status_code == 401


def member_of_team(session: Session) -> str:
    org = make_org(session, plan="team", anchor=now() - timedelta(days=3))
    user = make_user(session, org=org)
    session.commit()
    return user.email


@pytest.mark.parametrize("subject", [pro_user, free_user, member_of_team])
def test_key_revoked_elsewhere_records_nothing_from_the_next_call(
    session: Session, api: Api, subject: Any
) -> None:
    # Recording trusts a key this process authenticated a moment ago and lets
    # the recording statement check it is still live; another process (a
    # second worker, `flask revoke-api-key` on another machine) revoking it
    # must stop the very next suggestion all the same.
    email = subject(session)
    assert api("post", "/usage-events", json=event(email)).status_code == 201
    session.execute(update(ApiKey).values(revoked_at=now()))
    session.commit()
    for _ in range(2):
        refused = api("post", "/usage-events", json=event(email))
        assert refused.status_code == 401
        assert refused.json["error"]["code"] == "unauthorized"
    assert recorded(session) == (1, 1)


@pytest.mark.parametrize(
    "refused",
    [
        event("nobody@example.com"),  # would be 404: tells whether an account exists
        {"user_email": "x@example.com", "quantity": "lots"},  # would be 422
    ],
)
def test_a_key_revoked_elsewhere_learns_nothing_from_refusals_either(
    session: Session, api: Api, refused: dict[str, Any]
) -> None:
    email = pro_user(session)
    assert api("post", "/usage-events", json=event(email)).status_code == 201
    session.execute(update(ApiKey).values(revoked_at=now()))
    session.commit()

    answer = api("post", "/usage-events", json=refused)

    assert answer.status_code == 401
    assert answer.json["error"]["code"] == "unauthorized"
    assert recorded(session) == (1, 1)


def test_recording_keeps_last_used_at_current_to_the_minute(
    session: Session, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    email = pro_user(session)
    start = now()
    for minutes in (0, 0.5, 2):
        monkeypatch.setattr("portal.clock.now", lambda m=minutes: start + timedelta(minutes=m))
        assert api("post", "/usage-events", json=event(email)).status_code == 201
        session.expire_all()
        last_used = session.scalars(select(ApiKey)).one().last_used_at
        assert last_used is not None
        # Written at most once a minute, never more than a minute behind.
        assert start + timedelta(minutes=minutes) - last_used < timedelta(minutes=1)
    assert last_used == start + timedelta(minutes=2)


def test_key_use_is_remembered(session: Session, api: Api) -> None:
    email = pro_user(session)
    api("get", f"/users/{email}/usage")
    session.expire_all()
    assert session.scalars(select(ApiKey)).one().last_used_at is not None


# Checking usage


def test_usage_check_answers_with_the_shared_status(session: Session, api: Api) -> None:
    email = free_user(session)
    for _ in range(4):
        assert api("post", "/usage-events", json=event(email)).status_code == 201
    response = api("get", f"/users/{email.upper()}/usage")
    assert response.status_code == 200
    body = response.json
    assert body["allowed"] is True and body["reason"] == "within_quota"
    assert (body["used"], body["included"], body["remaining"], body["percent"]) == (4, 5, 1, 80.0)
    assert body["warning_level"] == "warning" and body["plan"] == "free"
    assert body["billing_subject"] == f"user:{email}"
    assert (
        datetime.fromisoformat(body["period_start"])
        <= now()
        < datetime.fromisoformat(body["period_end"])
    )


@pytest.mark.parametrize("email", ["nobody@example.com", "not-an-email", "x" * 300 + "@a.io"])
def test_usage_check_for_unknown_user_is_404(api: Api, email: str) -> None:
    response = api("get", f"/users/{email}/usage")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "user_not_found"


# Recording one event


def test_recording_answers_201_with_the_event_and_new_usage(session: Session, api: Api) -> None:
    email = pro_user(session)
    response = api("post", "/usage-events", json=event(email, quantity=3, metadata={"ch": "C1"}))
    assert response.status_code == 201
    assert response.json["usage"]["used"] == 3 and response.json["duplicate"] is False
    stored = session.get(UsageEvent, uuid.UUID(response.json["event_id"]))
    assert stored is not None and stored.event_metadata == {"ch": "C1"}


def test_same_idempotency_key_again_answers_200_with_the_original_event(
    session: Session, api: Api
) -> None:
    email = pro_user(session)
    first = api("post", "/usage-events", json=event(email, "retry-1"))
    again = api("post", "/usage-events", json=event(email, "retry-1"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["event_id"] == first.json["event_id"] and again.json["duplicate"] is True
    assert recorded(session) == (1, 1)


def test_key_reused_for_different_usage_is_409(session: Session, api: Api) -> None:
    email = pro_user(session)
    api("post", "/usage-events", json=event(email, "k"))
    response = api("post", "/usage-events", json=event(email, "k", quantity=5))
    assert response.status_code == 409
    assert response.json["error"]["code"] == "idempotency_key_reused"
    assert recorded(session) == (1, 1)


def test_hard_cap_answers_402_and_records_nothing(session: Session, api: Api) -> None:
    email = free_user(session)
    for _ in range(5):
        api("post", "/usage-events", json=event(email))
    response = api("post", "/usage-events", json=event(email))
    assert response.status_code == 402
    assert response.json["error"]["code"] == "limit_reached"
    assert "resets on" in response.json["error"]["message"]
    assert recorded(session) == (5, 5)


def test_unknown_user_is_404_and_records_nothing(session: Session, api: Api) -> None:
    response = api("post", "/usage-events", json=event("ghost@example.com"))
    assert response.status_code == 404
    assert recorded(session) == (0, 0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"quantity": 0}, {"quantity"}),
        ({"quantity": -1}, {"quantity"}),
        ({"quantity": 2.5}, {"quantity"}),
        ({"quantity": "3"}, {"quantity"}),
        ({"quantity": 10**12}, {"quantity"}),
        ({"event_type": "summary"}, {"event_type"}),
        ({"idempotency_key": "k" * 256}, {"idempotency_key"}),
        ({"idempotency_key": None}, {"idempotency_key"}),
        ({"idempotency_key": "nul\x00byte"}, {"idempotency_key"}),
        ({"occurred_at": "yesterday"}, {"occurred_at"}),
        ({"occurred_at": "2026-11-29T10:00:00"}, {"occurred_at"}),
        ({"occurred_at": "0001-01-01T00:00:00+05:00"}, {"occurred_at"}),
        ({"occurred_at": "2999-01-01T00:00:00Z"}, {"occurred_at"}),
        ({"metadata": "not an object"}, {"metadata"}),
        ({"metadata": {"x": "y" * 3000}}, {"metadata"}),
        ({"metadata": {"n": 10**30}}, {"metadata"}),
        ({"metadata": {"deep": [[[{"n": -(2**64)}]]]}}, {"metadata"}),
        ({"surprise": True}, {"surprise"}),
        ({"user_email": ["a@b.co"]}, {"user_email"}),
        ({"quantity": 0, "event_type": 7, "extra": 1}, {"quantity", "event_type", "extra"}),
    ],
)
def test_invalid_fields_get_422_naming_every_one_and_nothing_is_recorded(
    session: Session, api: Api, fields: dict[str, Any], named: set[str]
) -> None:
    email = pro_user(session)
    response = api("post", "/usage-events", json={**event(email), **fields})
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "validation_failed" and set(error["fields"]) == named
    assert recorded(session) == (0, 0)


def test_body_problems_have_their_own_statuses(session: Session, api: Api) -> None:
    email = pro_user(session)
    not_json = api("post", "/usage-events", data="{oops", content_type="application/json")
    assert (not_json.status_code, not_json.json["error"]["code"]) == (400, "invalid_json")
    wrong_type = api("post", "/usage-events", data="user_email=x", content_type="text/plain")
    assert wrong_type.status_code == 415
    array = api("post", "/usage-events", json=[event(email)])
    assert array.status_code == 422
    huge = api("post", "/usage-events", json=event(email, metadata={"x": "y" * 70_000}))
    assert (huge.status_code, huge.json["error"]["code"]) == (413, "payload_too_large")
    assert recorded(session) == (0, 0)


def test_occurred_at_with_an_offset_is_placed_by_its_instant(session: Session, api: Api) -> None:
    email = pro_user(session)
    moment = (now() - timedelta(hours=2)).astimezone().isoformat()
    response = api("post", "/usage-events", json=event(email, occurred_at=moment))
    assert response.status_code == 201
    stored = session.get(UsageEvent, uuid.UUID(response.json["event_id"]))
    assert stored is not None
    assert stored.occurred_at == datetime.fromisoformat(moment)


def test_unknown_paths_and_methods_answer_in_json(api: Api) -> None:
    missing = api("get", "/nothing-here")
    assert (missing.status_code, missing.json["error"]["code"]) == (404, "not_found")
    wrong = api("delete", "/usage-events")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]


def test_every_api_answer_carries_the_security_headers(session: Session, api: Api) -> None:
    email = pro_user(session)
    answers = [
        api("post", "/usage-events", json=event(email)),  # answered in front of Flask
        api("post", "/usage-events", data="{oops", content_type="application/json"),
        api("get", f"/users/{email}/usage"),  # a Flask view
    ]
    for answer in answers:
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in answer.headers  # plain HTTP
    over_https = api("post", "/usage-events", json=event(email), base_url="https://localhost")
    assert over_https.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_a_server_failure_is_a_json_500_and_a_retry_records_once(
    session: Session, api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    email = pro_user(session)
    payload = event(email)
    real_build_status = recording.build_status
    failures = iter([RuntimeError("the status could not be built")])

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        for failure in failures:
            raise failure
        return real_build_status(*args, **kwargs)

    monkeypatch.setattr(recording, "build_status", fails_once)
    failed = api("post", "/usage-events", json=payload)
    assert failed.status_code == 500
    assert failed.json == {
        "error": {"code": "internal_error", "message": "The server failed; retry the request."}
    }
    assert "the status could not be built" in caplog.text
    # Whether the event was written before the failure or not, the retry the
    # README advises (same idempotency key) leaves it recorded exactly once.
    retried = api("post", "/usage-events", json=payload)
    assert retried.status_code in (200, 201)
    assert recorded(session) == (1, 1)


# Batches


def test_batch_returns_one_result_per_event_in_order(session: Session, api: Api) -> None:
    free, pro = free_user(session), pro_user(session)
    api("post", "/usage-events", json=event(pro, "seen-before"))
    events = [
        event(free, "a", quantity=4),
        event(free, "b", quantity=2),  # over the cap
        event(pro, "seen-before"),
        {"user_email": pro, "quantity": 0},
        event("ghost@example.com", "g"),
        event(pro, "c", quantity=10),
        event(free, "d"),
    ]
    response = api("post", "/usage-events/batch", json={"events": events})
    assert response.status_code == 200
    results = response.json["results"]
    assert [r["status"] for r in results] == [
        "created",
        "limit_reached",
        "duplicate",
        "invalid",
        "invalid",
        "created",
        "created",
    ]
    assert [r["index"] for r in results] == list(range(7))
    assert set(results[3]["errors"]) == {"quantity", "idempotency_key"}
    assert results[4]["errors"] == {"user_email": "no such user"}
    assert response.json["summary"] == {
        "created": 3,
        "duplicate": 1,
        "limit_reached": 1,
        "invalid": 2,
        "user_disabled": 0,
    }
    assert recorded(session) == (4, 16)


def test_batch_envelope_is_validated(session: Session, api: Api) -> None:
    email = pro_user(session)
    too_many = {"events": [event(email) for _ in range(1001)]}
    for body in ({}, {"events": []}, {"events": "x"}, too_many, {"events": [event(email)], "x": 1}):
        response = api("post", "/usage-events/batch", json=body)
        assert response.status_code == 422, body
    assert recorded(session) == (0, 0)


def test_team_members_draw_on_one_pool_over_http(session: Session, api: Api) -> None:
    org = make_org(session, plan="team", seats=1, anchor=now() - timedelta(days=2))
    alice = make_user(session, org=org).email
    bob = make_user(session, org=org).email
    session.commit()
    api("post", "/usage-events/batch", json={"events": [event(alice, quantity=30)]})
    response = api("post", "/usage-events", json=event(bob, quantity=30))
    usage = response.json["usage"]
    assert (usage["used"], usage["member_used"], usage["overage_count"]) == (60, 30, 10)
    assert usage["billing_subject"] == f"organization:{org.slug}"


# Concurrency through HTTP


def concurrently(app: Flask, key: str, bodies: list[tuple[str, dict[str, Any]]]) -> list[int]:
    barrier = threading.Barrier(len(bodies))
    statuses = [0] * len(bodies)

    def send(i: int) -> None:
        path, body = bodies[i]
        client = app.test_client()
        barrier.wait()
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        statuses[i] = response.status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


def test_same_key_from_eight_clients_at_once_records_once(
    app: Flask, session: Session, api_key: str
) -> None:
    email = pro_user(session)
    statuses = concurrently(app, api_key, [("/api/v1/usage-events", event(email, "same"))] * 8)
    assert Counter(statuses) == {201: 1, 200: 7}
    assert recorded(session) == (1, 1)


def test_hard_cap_holds_through_http_under_concurrency(
    app: Flask, session: Session, api_key: str
) -> None:
    email = free_user(session)
    singles = [("/api/v1/usage-events", event(email)) for _ in range(12)]
    batches = [("/api/v1/usage-events/batch", {"events": [event(email), event(email)]})] * 4
    statuses = concurrently(app, api_key, singles + batches)
    assert all(s in (200, 201, 402) for s in statuses)
    assert recorded(session) == (5, 5)


# Rate limiting


def test_rate_limit_per_key_answers_429_with_retry_after(database_url: str) -> None:
    from portal import create_app
    from portal.extensions import db

    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True, "API_RATE_LIMIT": "3 per minute"}
    )
    with app.app_context():
        _, key = create_api_key(db.session(), "limited", now())
        _, other = create_api_key(db.session(), "other", now())
        db.session.commit()
        try:
            client = app.test_client()
            headers = {"Authorization": f"Bearer {key}"}
            statuses = [
                client.get("/api/v1/users/a@b.example/usage", headers=headers).status_code
                for _ in range(4)
            ]
            assert statuses == [404, 404, 404, 429]
            limited = client.get("/api/v1/users/a@b.example/usage", headers=headers)
            assert limited.json["error"]["code"] == "rate_limited"
            assert int(limited.headers["Retry-After"]) > 0
            # Another key has its own allowance.
            fresh = client.get(
                "/api/v1/users/a@b.example/usage", headers={"Authorization": f"Bearer {other}"}
            )
            assert fresh.status_code == 404
        finally:
            db.session.remove()
            from tests.conftest import _empty_tables

            _empty_tables()
            db.engine.dispose()


def test_a_number_too_large_for_a_double_in_metadata_is_a_422(session: Session, api: Api) -> None:
    email = pro_user(session)
    raw = f'{{"user_email": "{email}", "idempotency_key": "k", "metadata": {{"x": [1e400]}}}}'
    single = api("post", "/usage-events", data=raw, content_type="application/json")
    assert single.status_code == 422
    assert set(single.json["error"]["fields"]) == {"metadata"}
    body = f'{{"events": [{raw}]}}'
    batch = api("post", "/usage-events/batch", data=body, content_type="application/json")
    assert batch.json["results"][0]["status"] == "invalid"
    assert set(batch.json["results"][0]["errors"]) == {"metadata"}
    assert recorded(session) == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        '{"user_email": "a@b.co", "idempotency_key": "k", "metadata": {"x": NaN}}',
        '{"user_email": "a@b.co", "idempotency_key": "k", "quantity": Infinity}',
        '{"metadata": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
)
def test_json_that_postgresql_or_python_would_choke_on_is_a_400(
    session: Session, api: Api, raw: str
) -> None:
    response = api("post", "/usage-events", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"
    assert recorded(session) == (0, 0)


def test_the_rate_limit_counts_per_key_however_the_header_spells_it(database_url: str) -> None:
    from portal import create_app
    from portal.extensions import db

    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True, "API_RATE_LIMIT": "5 per hour"}
    )
    with app.app_context():
        _, key = create_api_key(db.session(), "limited", now())
        db.session.commit()
        try:
            client = app.test_client()
            spellings = [
                f"Bearer {key}",
                f"bearer {key}",
                f"BEARER {key}",
                f"Bearer  {key}",
                f"Bearer\t{key}",
                f"  Bearer {key}  ",
            ]
            statuses = [
                client.get(
                    "/api/v1/users/a@b.example/usage", headers={"Authorization": spelling}
                ).status_code
                for spelling in spellings
            ]
            # RFC 6750: the scheme in any case, spaces or tabs around the key.
            assert statuses == [404] * 5 + [429]
        finally:
            db.session.remove()
            from tests.conftest import _empty_tables

            _empty_tables()
            db.engine.dispose()
