"""A real browser for the panel's end-to-end tests: Debian's chromium driven by Playwright.

No browser is downloaded (``playwright install`` is never run): Playwright drives the system's
``/usr/bin/chromium``. Without it, or without the ``playwright`` package, the browser tests are
skipped, unless ``TINBAO_REQUIRE_BROWSER=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = Path(os.environ.get("TINBAO_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER_ENV = "TINBAO_REQUIRE_BROWSER"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: Milliseconds Playwright waits for a page, a selector or a download before failing.
TIMEOUT_MS = 30_000


def require_browser() -> None:
    """Skip (or fail, with ``TINBAO_REQUIRE_BROWSER=1``) when chromium or Playwright is missing."""
    missing = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not missing:
        return
    reason = "no browser for the end-to-end panel test: missing " + " and ".join(missing)
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{REQUIRE_BROWSER_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free localhost port; yields its base URL (``http://127.0.0.1:N``)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: the OS picks, no race
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Debian chromium under Playwright (call :func:`require_browser` first)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            await browser.close()
