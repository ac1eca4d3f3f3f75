"""``python -m tests.stripe_standin [--port N]``: serve the stand-in until interrupted."""

from __future__ import annotations

from tests.stripe_standin.server import main

main()
