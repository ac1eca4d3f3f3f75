"""The portal's one clock.

Domain functions take ``now`` as an argument and never read the time
themselves; the edges that call them (pages, the API, ``flask`` commands)
read it here, through ``clock.now()``, so a test that moves time patches
``portal.clock.now`` once for all of them. The models' ``created_at``
defaults use this function too, but hold it from import on: patching does
not move them, and nothing that counts usage depends on them.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware in UTC, as every stored timestamp is."""
    return datetime.now(UTC)
