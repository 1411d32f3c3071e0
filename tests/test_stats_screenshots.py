"""Chromium screenshots of the statistics page and of the monthly report, at desktop and phone
widths, saved as test artifacts (``TINBAO_TEST_ARTIFACTS``, default ``var/test-artifacts``).

Also checks what a commander sees first: the headline figures in the first screen at both
widths, every chart and the map loaded as an image, and no script or CSP error."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from admin.auth import hash_password
from admin.web import build_web_app
from bot.runtime import Service
from config.settings import Settings
from handlers.security import new_tracking_code
from storage.models import Officer, OfficerScope, Report
from tests.admin_browser_support import TIMEOUT_MS, chromium, require_browser, serve
from tests.e2e import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TINBAO_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))
GEOMETRY = Path(__file__).parent / "data" / "geometry_small.geojson"
PASSWORD = "correct horse battery staple"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


async def _seed(service: Service) -> None:
    async with service.session_factory() as db, db.begin():
        db.add(
            Officer(
                display_name="Chỉ huy",
                role="admin",
                username="boss",
                password_hash=hash_password(PASSWORD),
                scopes=[OfficerScope(queue_key="*")],
            )
        )
        start = datetime(2025, 6, 1, 3, tzinfo=UTC)
        for i in range(60):
            created = start + timedelta(hours=11 * i)
            resolved = i % 3 == 0
            db.add(
                Report(
                    code=new_tracking_code(),
                    kind="emergency" if i % 10 == 0 else "tip",
                    category=None if i % 10 == 0 else ("theft", "drugs", "robbery")[i % 3],
                    unit_code=("30307", "30316", "31078", "30301")[i % 4],
                    contact_mode="none",
                    pin_hash="x",
                    locale="vi",
                    channel="telegram",
                    status="resolved" if resolved else "new",
                    outcome="clarified" if resolved else None,
                    subjects_handled=1 if resolved else None,
                    citizen_assisted_arrest=resolved and i % 2 == 0,
                    created_at=created,
                    updated_at=created,
                    claimed_at=created + timedelta(minutes=20 + i) if resolved else None,
                    resolved_at=created + timedelta(days=1) if resolved else None,
                )
            )


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_screenshots_of_the_statistics_and_the_report(
    db_url: str, engine: object, tmp_path: Path
) -> None:
    require_browser()
    from playwright.async_api import ConsoleMessage, Error, expect

    settings = Settings(
        database_url=db_url,
        secret_key=TEST_SECRET_KEY,
        data_dir=tmp_path,
        geometry_file=GEOMETRY,
    )
    service = await Service.create(settings)
    await _seed(service)
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        async with serve(build_web_app(service)) as base, chromium() as browser:
            for width_name, (width, height) in SIZES.items():
                context = await browser.new_context(
                    viewport={"width": width, "height": height}, locale="vi-VN"
                )
                context.set_default_timeout(TIMEOUT_MS)
                page = await context.new_page()
                problems: list[str] = []

                def on_console(message: ConsoleMessage, problems: list[str] = problems) -> None:
                    url = message.location.get("url", "")
                    if message.type == "error" and not url.endswith("favicon.ico"):
                        problems.append(message.text)

                def on_error(error: Error, problems: list[str] = problems) -> None:
                    problems.append(str(error))

                page.on("console", on_console)
                page.on("pageerror", on_error)
                await page.goto(f"{base}/admin/login")
                await page.locator('input[name="username"]').fill("boss")
                await page.locator('input[name="password"]').fill(PASSWORD)
                await page.locator('form[action="/admin/login"] button[type="submit"]').click()
                await page.wait_for_url(f"{base}/admin/**")
                for name, path in (
                    ("stats", "/admin/stats?period=2025-06"),
                    ("report", "/admin/stats/report?period=2025-06"),
                ):
                    await page.goto(f"{base}{path}")
                    await page.wait_for_load_state("networkidle")
                    images = page.locator("img")
                    for i in range(await images.count()):
                        loaded = await images.nth(i).evaluate("i => i.complete && i.naturalWidth")
                        assert loaded, await images.nth(i).get_attribute("src")
                    first = page.locator("#headline" if name == "stats" else "#report-figures")
                    box = await first.bounding_box()
                    assert box is not None and box["y"] < height, (name, width_name, box)
                    shot = ARTIFACTS / f"{name}-{width_name}.png"
                    png = await page.screenshot(path=str(shot), full_page=True)
                    assert len(png) > 10_000
                assert await page.locator("#map").count() == 0  # the report has no map
                await page.goto(f"{base}/admin/stats?period=2025-06")
                await expect(page.locator("#map")).to_be_visible()
                assert problems == []
                await context.close()
    finally:
        await service.stop()
