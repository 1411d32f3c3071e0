"""The citizens' reporting page over HTTP (issue 11): the same use cases as the chat, behind
CSRF, a challenge, strict headers and no client address anywhere."""

from __future__ import annotations

import asyncio
import io
import re

from aiohttp import ClientSession, CookieJar, FormData
from PIL import Image
from sqlalchemy import select

from bot.runtime import Service
from handlers.i18n import t
from handlers.media import clean_image
from handlers.officers import Registry
from handlers.report_actions import ReportActions
from handlers.security import format_code
from storage.models import ContactRoute, MediaBlob, RelayMessage, Report, ReportMedia
from tests.e2e import Chat
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory
from tests.web_support import (
    LX,
    LX_UNIT,
    base_url_fixture,  # noqa: F401 - fixture
    code_and_pin,
    fill,
    gps_jpeg,
    hidden,
    service_fixture,  # noqa: F401 - fixture
    standin_fixture,  # noqa: F401 - fixture
)

TIP = {
    "category": "drugs",
    "place_q": "long xuyen",
    "occurred": "today",
    "description": "Mua bán ma túy ở quán nước đầu hẻm 5, tối nào cũng có",
    "contact": "relay",
}


async def test_tip_is_stored_routed_and_carded_like_the_chat(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        status, html = await fill(
            http, base_url, "/tip", TIP, [("evidence", "a.jpg", gps_jpeg(), "image/jpeg")]
        )
    assert status == 200, html[:3000]
    code, pin = code_and_pin(html)
    assert re.fullmatch(r"\d{6}", pin)
    card = await standin.wait_for(
        lambda c: c.chat_id == LX.id and code in str(c.params), timeout=10
    )
    assert t("vi", "web.card.channel", channel=t("vi", "web.channel.web")) in str(card.params)
    async with service.session_factory() as db:
        report = await db.scalar(select(Report))
        assert report is not None and format_code(report.code) == code
        assert (report.channel, report.unit_code, report.category) == ("web", LX_UNIT, "drugs")
        content = await db.scalar(
            select(MediaBlob.content).join(ReportMedia, ReportMedia.blob_id == MediaBlob.id)
        )
        assert content is not None and b"Exif" not in content and b"GPS" not in content
        route = await db.scalar(select(ContactRoute))
        assert route is not None
        assert service.keyring is not None
        assert service.keyring.decrypt(route.route)["channel"] == "web"


async def test_headers_cookies_and_language(base_url: str) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        async with http.get(f"{base_url}/", headers={"Accept-Language": "en-GB,en"}) as r:
            html = await r.text()
            assert t("en", "web.home.tip") in html
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert "no-store" in r.headers["Cache-Control"]
            assert set(r.cookies) == {"tb_csrf"}
            assert "max-age" not in r.headers["Set-Cookie"].lower()
        async with http.get(f"{base_url}/?lang=vi", headers={"Accept-Language": "en"}) as r:
            assert t("vi", "web.home.tip") in await r.text()
        async with http.get(f"{base_url}/") as r:
            assert t("vi", "web.home.accident") in await r.text()  # Vietnamese by default


async def test_missing_csrf_is_refused_and_nothing_is_stored(
    base_url: str, service: Service
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        await http.get(f"{base_url}/tip")
        form = FormData(TIP)
        async with http.post(f"{base_url}/tip", data=form) as r:
            assert r.status == 403
            assert t("vi", "web.err.csrf") in await r.text()
    async with service.session_factory() as db:
        assert await db.scalar(select(Report)) is None


async def test_oversized_upload_is_refused_beside_the_field_and_text_kept(
    base_url: str, service: Service
) -> None:
    big = b"\xff\xd8" + b"0" * (21 * 1024 * 1024)
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        status, html = await fill(
            http, base_url, "/tip", TIP, [("evidence", "big.jpg", big, "image/jpeg")]
        )
    assert status == 400
    assert "big.jpg" in html and 'id="evidence-error"' in html
    assert "quán nước đầu hẻm 5" in html  # nothing typed is lost
    async with service.session_factory() as db:
        assert await db.scalar(select(Report)) is None


async def test_unit_link_preselects_and_a_forged_one_is_ignored(base_url: str) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        async with http.get(f"{base_url}/tip?u={LX_UNIT}") as r:
            html = await r.text()
            assert f'value="{LX_UNIT}" checked' in html
        for forged in ("99999", "<script>x</script>", "' OR 1=1 --", "x" * 5000):
            async with http.get(f"{base_url}/tip", params={"u": forged}) as r:
                html = await r.text()
                assert r.status == 200 and "<script>x" not in html
                assert 'name="unit" value=' not in html
        fields = {**TIP, "place_q": "", "unit": "99999", "unit_unknown": ""}
        status, html = await fill(http, base_url, "/tip", fields)
        assert status == 400 and 'id="place-error"' in html


async def test_html_in_every_field_is_shown_as_text(base_url: str, service: Service) -> None:
    evil = '<script>alert(1)</script><b onmouseover="x">'
    fields = {
        "category": evil,
        "place_q": evil,
        "occurred": evil,
        "occurred_text": evil,
        "description": evil,
        "contact": evil,
        "phone": evil,
        "unit": evil,
    }
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        status, html = await fill(http, base_url, "/tip", fields)
        assert status == 400
        assert "<script>alert" not in html and "&lt;script&gt;" in html
        ok = {**TIP, "description": f"Có kẻ bán hàng cấm {evil} ở chợ", "occurred_text": evil}
        status, html = await fill(http, base_url, "/tip", ok)
        assert status == 200, html[:2000]
        status, html = await fill(http, base_url, "/accident", {"place_q": evil})
        assert status == 200 and "<script>alert" not in html


async def test_status_with_a_telegram_code_on_the_web_and_the_other_way_round(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Ẩn", user_id=990001)
    chat = Chat(standin, factory, service, tipster)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Trộm xe máy ở bãi giữ xe chợ Long Xuyên")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.none", mark=""))
    calls = await chat.press(t("vi", "summary.confirm"))
    text = " ".join(chat.texts(calls))
    tg_code = re.search(r"[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{5}", text)
    tg_pin = re.search(r"\b\d{6}\b", text)
    assert tg_code and tg_pin, text
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        async with http.get(f"{base_url}/status") as r:
            csrf = hidden(await r.text(), "csrf")
        data = {"csrf": csrf, "code": tg_code.group(0), "pin": tg_pin.group(0)}
        async with http.post(f"{base_url}/status", data=data) as r:
            html = await r.text()
            assert r.status == 200 and 'id="status-line"' in html, html[:2000]
            assert t("vi", "status.new") in html
        _, html = await fill(http, base_url, "/tip", {**TIP, "contact": "none"})
        web_code, web_pin = code_and_pin(html)
    calls = await chat.command("status", f"{web_code} {web_pin}")
    assert any(web_code in text for text in chat.texts(calls)), chat.texts(calls)


async def test_status_page_adds_evidence_and_keeps_a_refused_answer(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        _, html = await fill(http, base_url, "/tip", TIP)
        code, pin = code_and_pin(html)
        await standin.wait_for(lambda c: c.chat_id == LX.id and code in str(c.params), timeout=10)
        async with http.get(f"{base_url}/status") as r:
            csrf = hidden(await r.text(), "csrf")
        data = {"csrf": csrf, "code": code, "pin": pin}
        async with http.post(f"{base_url}/status", data=data) as r:
            assert r.status == 200 and t("vi", "web.status.messages") in await r.text()
            cookie = r.history[0].headers["Set-Cookie"]
            assert "tb_inbox=" in cookie and "max-age" not in cookie.lower()
        too_long = "Thêm chi tiết " + "x" * 4100
        form = FormData({"csrf": csrf, "message": too_long})
        form.add_field("evidence", gps_jpeg(), filename="b.jpg", content_type="image/jpeg")
        async with http.post(f"{base_url}/status/report", data=form) as r:
            html = await r.text()
            assert r.status == 400 and 'id="message-error"' in html
            assert too_long in html  # the answer typed is given back
            kept = hidden(html, "kept")
            assert kept
        form = FormData({"csrf": csrf, "message": "Xe biển số 67A-123.45", "kept": kept})
        async with http.post(f"{base_url}/status/report", data=form) as r:
            assert r.status == 200 and t("vi", "web.status.sent") in await r.text()
    await standin.wait_for(
        lambda c: c.chat_id == LX.id and "67A-123.45" in str(c.params), timeout=10
    )
    await standin.wait_for(lambda c: c.chat_id == LX.id and c.method == "sendPhoto", timeout=10)
    async with service.session_factory() as db:
        cards = (await db.scalars(select(Report))).all()
        assert len(cards) == 1


async def test_an_officers_photo_is_shown_only_behind_the_pin(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        _, html = await fill(http, base_url, "/tip", TIP)
        code, pin = code_and_pin(html)
        await standin.wait_for(lambda c: c.chat_id == LX.id and code in str(c.params), timeout=10)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
        photo = clean_image(buffer.getvalue())
        async with service.session_factory() as session, session.begin():
            report = await session.scalar(
                select(Report).where(Report.code == code.replace("-", ""))
            )
            officer = await Registry(session).by_telegram(515151)
            assert report is not None and officer is not None
            await ReportActions(session, officer, service.triage).ask(
                report, "Có phải người này không?", photo
            )
        assert service.messenger is not None
        service.messenger.kick()

        async with http.get(f"{base_url}/status") as r:
            csrf = hidden(await r.text(), "csrf")
        data = {"csrf": csrf, "code": code, "pin": pin}
        html = ""
        for _ in range(100):
            async with http.post(f"{base_url}/status", data=data) as r:
                html = await r.text()
            if "Có phải người này không?" in html:
                break
            await asyncio.sleep(0.1)
        found = re.search(r'<img class="photo" src="([^"]+)"', html)
        assert found, html[:3000]
        async with http.get(f"{base_url}{found.group(1)}") as r:
            assert r.status == 200
            assert await r.read() == photo.content
            assert "no-store" in r.headers["Cache-Control"]
    async with (  # no proven PIN: nothing
        ClientSession() as stranger,
        stranger.get(f"{base_url}{found.group(1)}", allow_redirects=False) as r,
    ):
        assert r.status == 404


async def test_a_database_failure_keeps_what_was_typed(
    base_url: str, service: Service, standin: BotAPIStandIn, db_url: str, monkeypatch
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.db import create_session_factory

    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        _, html = await fill(http, base_url, "/tip", TIP)
        code, pin = code_and_pin(html)
        async with http.get(f"{base_url}/status") as r:
            csrf = hidden(await r.text(), "csrf")
        async with http.post(f"{base_url}/status", data={"csrf": csrf, "code": code, "pin": pin}):
            pass
        # The database becomes unreachable (refused on PostgreSQL, unopenable on SQLite).
        gone = (
            "postgresql+asyncpg://postgres@127.0.0.1:1/tinbao_gone"
            if db_url.startswith("postgresql")
            else "sqlite+aiosqlite:////proc/tinbao-gone/db.sqlite"
        )
        broken = create_async_engine(gone)
        monkeypatch.setattr(service, "session_factory", create_session_factory(broken))
        try:
            notice = t("vi", "web.err.database")
            status, html = await fill(http, base_url, "/tip", TIP)
            assert status == 503 and notice in html, html[:3000]
            assert TIP["description"] in html and "113" in notice
            place = "Ngã tư Long Xuyên, xe tải va xe máy"
            status, html = await fill(http, base_url, "/accident", {"place_q": place})
            assert status == 503 and notice in html and place in html
            answer = "Xe biển số 67A-999.99 màu đỏ"
            form = FormData({"csrf": csrf, "message": answer, "lang": "vi"})
            async with http.post(f"{base_url}/status/report", data=form) as r:
                html = await r.text()
                assert r.status == 503 and notice in html and answer in html, html[:3000]
        finally:
            monkeypatch.undo()
            await broken.dispose()


async def test_answers_on_the_status_page_are_rate_limited(
    base_url: str, service: Service, standin: BotAPIStandIn, monkeypatch
) -> None:
    from bot.web import status_pages

    monkeypatch.setattr(status_pages, "ANSWER_LIMIT", 2)
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        _, html = await fill(http, base_url, "/tip", TIP)
        code, pin = code_and_pin(html)
        async with http.get(f"{base_url}/status") as r:
            csrf = hidden(await r.text(), "csrf")
        async with http.post(f"{base_url}/status", data={"csrf": csrf, "code": code, "pin": pin}):
            pass
        for n in (1, 2):
            form = {"csrf": csrf, "message": f"Thêm chi tiết số {n}", "lang": "vi"}
            async with http.post(f"{base_url}/status/report", data=form) as r:
                assert r.status == 200 and t("vi", "web.status.sent") in await r.text()
        form = {"csrf": csrf, "message": "Thêm chi tiết số 3", "lang": "en"}
        async with http.post(f"{base_url}/status/report", data=form) as r:
            html = await r.text()
            assert r.status == 429
            notice = t("en", "web.err.answer_rate_limited", minutes=60)
            assert notice in html.replace("&#39;", "'") and "Thêm chi tiết số 3" in html
    async with service.session_factory() as db:
        texts = (await db.scalars(select(RelayMessage.text))).all()
    assert "Thêm chi tiết số 3" not in texts and "Thêm chi tiết số 2" in texts
