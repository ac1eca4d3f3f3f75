"""JSON a client may send that Python or PostgreSQL would choke on: refused with a 4xx that names
the field, changing nothing; in a batch, only that event is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.models import UsageEvent
from tests.factories import make_user

Api = Any


def events(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(UsageEvent)) or 0


def raw(api: Api, path: str, text: str) -> Any:
    return api("post", path, data=text.encode(), content_type="application/json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"user_email": "pro\\ud800@example.com", "idempotency_key": "k"}', "user_email"),
        ('{"user_email": "%s", "idempotency_key": "k\\udfff"}', "idempotency_key"),
        ('{"user_email": "%s", "idempotency_key": "k", "\\ud800": 1}', "\\ud800"),
        ('{"user_email": "%s", "idempotency_key": "k", "event_type": "\\ud800"}', "event_type"),
        ('{"user_email": "%s", "idempotency_key": "k", "occurred_at": "\\ud800"}', "occurred_at"),
        ('{"user_email": "%s", "idempotency_key": "k", "metadata": {"\\ud800": 1}}', "metadata"),
        ('{"user_email": "%s", "idempotency_key": "k", "metadata": {"a": "\\udc00"}}', "metadata"),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_422_naming_the_field(
    session: Session, api: Api, body: str, field: str
) -> None:
    email = make_user(session, plan="pro").email
    session.commit()
    text = body.replace("%s", email)
    single = raw(api, "/usage-events", text)
    assert single.status_code == 422, single.get_data(as_text=True)
    assert field in single.json["error"]["fields"]

    good = json.dumps({"user_email": email, "idempotency_key": "good"})
    batch = raw(api, "/usage-events/batch", f'{{"events": [{good}, {text}]}}')
    assert batch.status_code == 200
    first, second = batch.json["results"]
    assert (first["status"], second["status"]) == ("created", "invalid")
    assert field in second["errors"]
    assert events(session) == 1


def test_a_lone_surrogate_in_the_batch_envelope_is_named(session: Session, api: Api) -> None:
    email = make_user(session, plan="pro").email
    session.commit()
    good = json.dumps({"user_email": email, "idempotency_key": "good"})
    answer = raw(api, "/usage-events/batch", f'{{"events": [{good}], "\\ud800": true}}')
    assert answer.status_code == 422 and "\\ud800" in answer.json["error"]["fields"]
    assert events(session) == 0


def test_the_six_characters_backslash_u0000_are_text_not_a_nul(session: Session, api: Api) -> None:
    email = make_user(session, plan="pro").email
    session.commit()
    body = {"user_email": email, "idempotency_key": "k", "metadata": {"note": "\\u0000"}}
    assert api("post", "/usage-events", json=body).status_code == 201
    stored = session.scalars(select(UsageEvent)).one()
    assert stored.event_metadata == {"note": "\\u0000"}
    nul = {"user_email": email, "idempotency_key": "n", "metadata": {"note": "\u0000"}}
    refused = api("post", "/usage-events", json=nul)
    assert refused.status_code == 422 and set(refused.json["error"]["fields"]) == {"metadata"}
