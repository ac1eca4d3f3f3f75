"""``RunState``: what one run's claims and senders share, from several threads."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta


class RunState:
    """One run's id, clock and time budget, counters, and the error that stops it.

    The claim and the senders update it at the same moment, each from a
    thread of its own (``claim_while_sending``): every change goes through
    ``lock``.
    """

    def __init__(
        self,
        started: datetime,
        max_seconds: float,
        monotonic: Callable[[], float],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.started = started
        self.monotonic = monotonic
        self.started_monotonic = monotonic()
        self.deadline = self.started_monotonic + max_seconds
        self.on_progress = on_progress
        self.run_id: int | None = None
        """The run's row in ``usage_report_runs``, once written."""
        self.counts: Counter[str] = Counter()
        self.skipped_reasons: Counter[str] = Counter()
        self.error: str | None = None
        """A configuration problem (Stripe refused the API key): nothing more is sent."""
        self.lock = threading.Lock()
        """Guards the state above while the claim and several senders share it."""

    # -- time ------------------------------------------------------------

    def now(self) -> datetime:
        return self.started + timedelta(seconds=self.elapsed())

    def elapsed(self) -> float:
        return self.monotonic() - self.started_monotonic

    def remaining(self) -> float:
        return self.deadline - self.monotonic()

    def going(self) -> bool:
        """Whether the run may take on more work: no error yet, and time left."""
        return self.error is None and self.remaining() > 0

    # -- counters --------------------------------------------------------

    def count(self, **amounts: int) -> None:
        """Add to the run's counters."""
        with self.lock:
            self.counts.update(amounts)

    def skip(self, reasons: Mapping[str, int]) -> None:
        """Add usage events that left the backlog unsent, by reason."""
        with self.lock:
            self.skipped_reasons.update(reasons)

    def progress(self, events: int) -> None:
        """Tell ``on_progress`` that ``events`` usage events were settled."""
        if self.on_progress is not None and events:
            with self.lock:
                self.on_progress(events)
