"""The bare-Flask baseline of the single-event benchmark: ``gunicorn … bench.baseline_app:app``.

One route that does what any JSON-over-HTTP recording must: read the JSON
body and write one row, with ``INSERT … RETURNING`` in autocommit (one round
trip). Served by the very command and workers that serve the portal, so the
ratio between the two is what the portal adds on top: authentication, plan
resolution, the running total, the backlog row and its answer.
"""

from __future__ import annotations

import os

from flask import Flask, request
from sqlalchemy import create_engine, text

from portal.config import normalize_database_url

# The table is created by bench/api_single.py in its scratch database.
INSERT = text(
    "INSERT INTO baseline_events (user_email, idempotency_key, quantity) "
    "VALUES (:user_email, :idempotency_key, :quantity) RETURNING id"
)

app = Flask(__name__)
engine = create_engine(
    normalize_database_url(os.environ["DATABASE_URL"]), isolation_level="AUTOCOMMIT"
)


@app.post("/events")
def record() -> tuple[dict[str, int], int]:
    body = request.get_json()
    with engine.connect() as connection:
        event_id = connection.execute(INSERT, body).scalar_one()
    return {"id": event_id}, 201
