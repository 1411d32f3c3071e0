"""The citizens' page in a real browser (issue 11): Debian's chromium through Playwright.

JavaScript off (Tor Browser at "safest"): a tip with a GPS-tagged photo, the card in the
officers' group, the status page with the officer's question, the answer back in the group, and
a wrong PIN's lockout; the accident page's numbers first. JavaScript on at 360 × 740: the same
tip, with a screenshot of every page (``TINBAO_ARTIFACTS``, default ``test-artifacts/web``).
Afterwards neither the log nor any table holds the client's address or the forwarded one.

Skipped without chromium or Playwright, unless ``TINBAO_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.runtime import Service
from handlers.i18n import t
from storage.models import Base, CardPost, MediaBlob, ReportMedia
from tests.admin_browser_support import TIMEOUT_MS, chromium, require_browser
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory
from tests.test_triage_e2e import ADMIN_ID, Group_, button, card_in_group, until
from tests.web_support import (
    FORWARDED,
    LX,
    answer,
    base_url_fixture,  # noqa: F401 - fixture
    gps_jpeg,
    service_fixture,  # noqa: F401 - fixture
    standin_fixture,  # noqa: F401 - fixture
)

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]
ARTIFACTS = Path(os.environ.get("TINBAO_ARTIFACTS", "test-artifacts")) / "web"
DESCRIPTION = "Mua bán ma túy ở quán nước đầu hẻm 5, tối nào cũng có"


def vi(key: str, **values: Any) -> str:
    return t("vi", key, **values)


async def file_tip(page: Any, base_url: str, shots: Path | None = None) -> tuple[str, str]:
    async def shot(name: str) -> None:
        if shots is not None:
            await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    await page.goto(f"{base_url}/")
    await shot("1-home")
    await page.click(f"text={vi('web.home.tip')}")
    await page.check("input[name=category][value=drugs]")
    await page.fill("#place_q", "long xuyen")
    await page.check("input[name=occurred][value=today]")
    await page.fill("#description", DESCRIPTION)
    await page.set_input_files(
        "#evidence", files=[{"name": "a.jpg", "mimeType": "image/jpeg", "buffer": gps_jpeg()}]
    )
    await page.check("input[name=contact][value=relay]")
    question = await page.inner_text("label[for=challenge]")
    await page.fill("#challenge", answer(question))
    await shot("2-tip-form")
    await page.click("button.send")
    await shot("3-code-and-pin")
    code = (await page.inner_text("#code")).strip()
    pin = (await page.inner_text("#pin")).strip()
    return code, pin


async def open_status(page: Any, base_url: str, code: str, pin: str) -> None:
    await page.goto(f"{base_url}/status")
    await page.fill("#code", code)
    await page.fill("#pin", pin)
    await page.click("button.send")


async def no_address_anywhere(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    for needle in ("127.0.0.1", FORWARDED):
        assert needle not in caplog.text
    async with service.session_factory() as db:
        for table in Base.metadata.sorted_tables:
            for row in (await db.execute(table.select())).all():
                dumped = repr(tuple(row))
                assert "127.0.0.1" not in dumped, table.name
                assert FORWARDED not in dumped, table.name


async def test_tip_status_and_accident_with_javascript_off(
    base_url: str, service: Service, standin: BotAPIStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    require_browser()
    caplog.set_level(logging.DEBUG)
    factory = UpdateFactory(standin)
    officer = factory.new_user(first_name="Trung úy", last_name="Lâm", user_id=880002)
    admin = factory.new_user(first_name="Quản trị", user_id=ADMIN_ID)
    group = Group_(standin, factory, service)
    hello = factory.group_text(officer, "Chào mọi người", group=LX)["message"]
    await group.command(admin, "enrol", "officer", reply_to=hello)
    async with chromium() as browser:
        context = await browser.new_context(
            java_script_enabled=False,
            locale="vi-VN",
            extra_http_headers={"X-Forwarded-For": FORWARDED},
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        code, pin = await file_tip(page, base_url)
        assert re.fullmatch(r"[2-9A-Z]{5}-[2-9A-Z]{5}", code) and re.fullmatch(r"\d{6}", pin)

        # The card reaches the officers' group, and the stored photo carries no metadata.
        card = await card_in_group(standin)
        assert code in card["text"]
        async with service.session_factory() as db:
            stored = await db.scalar(
                select(MediaBlob.content).join(ReportMedia, ReportMedia.blob_id == MediaBlob.id)
            )
        assert stored is not None and b"Exif" not in stored and b"GPS" not in stored

        # An officer claims it and asks a question; it appears on the status page.
        async def posted() -> bool:
            async with service.session_factory() as db:
                return await db.scalar(select(CardPost)) is not None

        await until(posted)
        await group.press(officer, card, button(card, "r:claim:"))
        await group.press(officer, card, button(card, "r:ask:"))
        prompt = await standin.wait_for(
            lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
            timeout=10,
        )
        await group.reply(officer, "Quán tên gì, mấy giờ mở cửa?", prompt.result)
        await open_status(page, base_url, code, pin)
        for _ in range(100):
            if "Quán tên gì" in await page.content():
                break
            await page.wait_for_timeout(100)
            await page.reload()
        assert "Quán tên gì, mấy giờ mở cửa?" in await page.inner_text("#messages")
        assert vi("status.needs_info") in await page.inner_text("#status-line")

        # The tipster answers; the answer reaches the group.
        await page.fill("#message", "Quán Cây Bàng, mở từ 18 giờ")
        await page.click("button.send")
        assert vi("web.status.sent") in await page.content()
        await standin.wait_for(
            lambda c: c.chat_id == LX.id and "Quán Cây Bàng" in str(c.params), timeout=10
        )

        # Wrong PINs lock the code out, as in the chat: then even the right PIN is refused.
        wrong = "000000" if pin != "000000" else "111111"
        for _ in range(service.settings.pin_attempts_per_code):
            await open_status(page, base_url, code, wrong)
            assert vi("status.wrong") in await page.content()
        await open_status(page, base_url, code, pin)
        minutes = service.settings.pin_attempt_window_minutes
        assert vi("status.locked", minutes=minutes) in await page.content()

        # The accident page: the emergency numbers come first, as tel: links.
        await page.goto(f"{base_url}/accident")
        hrefs = await page.locator("main a, main input, main button").evaluate_all(
            "els => els.map(e => e.getAttribute('href') || e.tagName)"
        )
        assert hrefs[:4] == ["tel:113", "tel:115", "tel:114", "tel:112"], hrefs
        await page.fill("#place_q", "Ngã tư Long Xuyên, xe tải va xe máy")
        await page.check("input[name=injured][value='1']")
        await page.fill("#challenge", answer(await page.inner_text("label[for=challenge]")))
        await page.click("button.send")
        assert vi("web.done.emergency") in await page.content()
        await context.close()
    await no_address_anywhere(service, caplog)


async def test_tip_at_360_px_with_javascript_on_saves_screenshots(
    base_url: str, service: Service, standin: BotAPIStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    require_browser()
    caplog.set_level(logging.DEBUG)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with chromium() as browser:
        context = await browser.new_context(
            viewport={"width": 360, "height": 740},
            locale="vi-VN",
            extra_http_headers={"X-Forwarded-For": FORWARDED},
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        code, pin = await file_tip(page, base_url, ARTIFACTS)
        assert await page.is_visible("button.print")  # the script runs under the CSP
        card = await card_in_group(standin)
        assert code in card["text"]
        await open_status(page, base_url, code, pin)
        await page.screenshot(path=str(ARTIFACTS / "4-status.png"), full_page=True)
        await page.goto(f"{base_url}/accident")
        await page.screenshot(path=str(ARTIFACTS / "5-accident.png"), full_page=True)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, "the page scrolls sideways at 360 px"
        assert not problems, problems
        await context.close()
    await no_address_anywhere(service, caplog)
