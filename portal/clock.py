"""The portal's one clock.

Domain functions take ``now`` as an argument and never read the time
themselves; the edges that call them (pages, the API, ``flask`` commands and
the models' ``created_at`` defaults) read it here, through ``clock.now()``,
so a test that moves time patches ``portal.clock.now`` once for all of them.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware in UTC, as every stored timestamp is."""
    return datetime.now(UTC)
