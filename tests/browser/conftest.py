"""Real headless Chromium (Debian's package) driven by Playwright against a live server.

Playwright's own browser download cannot work here, so the tests launch
``/usr/bin/chromium`` (or ``CHROMIUM_PATH``) through ``executable_path``.
Without it they are skipped, saying so; in CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def serve(app: Flask, port: int = 0) -> tuple[BaseWSGIServer, threading.Thread]:
    """The app served on a loopback port (a free one by default), in a thread."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def stop(server: BaseWSGIServer, thread: threading.Thread) -> None:
    """Stop serving and close the port, so connections to it are refused."""
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app served on a free loopback port, in a thread, for this test."""
    server, thread = serve(app)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        stop(server, thread)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; CI must install Debian's chromium")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    page.console_errors = errors  # a test that makes polls fail on purpose filters its own
    yield page
    context.close()
    # A CSP violation or a script error shows up here.
    assert errors == [], errors
