"""The portal's one clock.

Domain functions take ``now`` as an argument and never read the time
themselves; the edges that call them (pages, the API, ``flask`` commands)
read it here, through ``clock.now()``, so a test that moves time patches
``portal.clock.now`` once for all of them: the models' ``created_at``
defaults and new event ids read it too, at each call.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware in UTC, as every stored timestamp is."""
    return datetime.now(UTC)
