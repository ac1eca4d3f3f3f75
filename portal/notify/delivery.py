"""What a channel says of one delivery attempt."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"
    """It may pass later: a timeout, a refused connection, SMTP 4xx, HTTP 429 or 5xx."""
    FAILED = "failed"
    """It will not pass as it is: SMTP 5xx, HTTP 4xx, an address the server cannot take."""
    TAKEN_OVER = "taken_over"
    """This run's lease ran out and another run holds the message now: not sent from here."""


@dataclass(frozen=True)
class Delivered:
    outcome: Outcome
    detail: str | None = None
    """What went wrong, or a note on a send that was not confirmed."""
