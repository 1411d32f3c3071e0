"""An officer's question may carry a photo, from the group chat or from the panel: end to end
through python-telegram-bot, the delivery workers, the panel over HTTP and the Bot API stand-in.

The photo reaches the tipster re-sent from its cleaned copy (never forwarded or copied from the
officer's message), without the metadata it came with, with the question as its caption and
nothing about the officer; it goes through the outbox and is audited.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar, FormData, web
from PIL import Image
from sqlalchemy import select

from admin.auth import hash_password
from bot.cli import app_runner, build_app
from bot.runtime import Service
from handlers.i18n import t
from handlers.security import format_code
from storage.models import (
    CardPost,
    MediaBlob,
    Officer,
    OfficerScope,
    OutboxMessage,
    RelayMessage,
    Report,
    ReportEvent,
)
from tests.e2e import Chat, running_service, service_settings
from tests.standin import ApiCall, BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory, User, make_jpeg

LX = Group(-1002000000001, "Công an phường Long Xuyên")
ADMIN_ID = 515151
#: What the officers' photos carry and must not reach the tipster.
CAMERA = "OfficerCam X9"
GPS = (10.3759, 105.4185)
PASSWORD = "correct horse battery staple"


@pytest.fixture
async def standin() -> AsyncIterator[BotAPIStandIn]:
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path: Path) -> AsyncIterator[Service]:
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        'units = ["30307", "30292"]\n',
        encoding="utf-8",
    )
    settings = service_settings(
        standin,
        db_url,
        tmp_path,
        queues_file=queues,
        duty_chat_id=-1009999999999,
        admin_telegram_ids=[ADMIN_ID],
    )
    async with running_service(settings) as running:
        yield running


async def _send(standin: BotAPIStandIn, service: Service, update: dict) -> None:
    assert service.telegram is not None
    before = service.telegram.updates_handled
    standin.push_update(update)
    await service.telegram.wait_handled(before + 1)


async def _tip(standin: BotAPIStandIn, service: Service, factory: UpdateFactory) -> tuple:
    """A tip with the anonymous relay from a Telegram tipster; its card in the group."""
    tipster = factory.new_user(first_name="Bí Mật", username="secret_tipster", user_id=880001)
    chat = Chat(standin, factory, service, tipster)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.drugs"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Mua bán ma túy ở quán nước đầu hẻm 5")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.relay", mark="✓ "))
    await chat.press(t("vi", "summary.confirm"))
    card = await standin.wait_for(
        lambda c: (
            c.method == "sendMessage"
            and c.chat_id == LX.id
            and c.ok
            and "r:claim:" in str(c.params.get("reply_markup"))
        ),
        timeout=10,
    )
    for _ in range(200):  # the card's post is recorded just after the call
        async with service.session_factory() as session:
            if await session.scalar(select(CardPost)) is not None:
                break
        await asyncio.sleep(0.05)
    return tipster, card.result


async def _enrolled(standin, service, factory: UpdateFactory) -> User:
    officer = factory.new_user(first_name="Trung úy", last_name="Lâm", user_id=880002)
    admin = factory.new_user(first_name="Quản trị", user_id=ADMIN_ID)
    hello = factory.group_text(officer, "Chào mọi người", group=LX)["message"]
    update = factory.group_command(admin, "enrol", "officer", group=LX)
    update["message"]["reply_to_message"] = hello
    await _send(standin, service, update)
    return officer


async def _photo_to(standin: BotAPIStandIn, tipster: User, question: str) -> ApiCall:
    return await standin.wait_for(
        lambda c: (
            c.method == "sendPhoto" and c.chat_id == tipster.id and question in (c.text or "")
        ),
        timeout=10,
    )


async def _group_says(standin: BotAPIStandIn, text: str, start: int = 0) -> ApiCall:
    return await standin.wait_for(
        lambda c: c.chat_id == LX.id and text in (c.text or ""), timeout=10, start=start
    )


async def _stored_photos(service: Service) -> list[bytes]:
    async with service.session_factory() as session:
        relays = (
            await session.scalars(
                select(RelayMessage)
                .where(RelayMessage.direction == "to_citizen")
                .order_by(RelayMessage.id)
            )
        ).all()
        return [
            bytes(
                await session.scalar(select(MediaBlob.content).where(MediaBlob.id == r.blob_id))
                or b""
            )
            for r in relays
            if r.blob_id is not None
        ]


def _assert_anonymous(call: ApiCall, original: bytes, officer_words: tuple[str, ...]) -> None:
    """The photo sent is a new image: no EXIF (camera, GPS), nothing naming the officer."""
    [upload] = call.uploads.values()
    assert CAMERA.encode() in original and b"Exif" in original
    assert CAMERA.encode() not in upload.content and b"Exif" not in upload.content
    with Image.open(io.BytesIO(upload.content)) as image:
        assert not image.getexif() and not image.info.get("exif")
    for word in officer_words:
        assert word not in str(call.params)
        assert word not in (upload.filename or "")


async def test_an_officer_asks_with_a_photo_from_the_group(standin, service) -> None:
    factory = UpdateFactory(standin)
    officer = await _enrolled(standin, service, factory)
    tipster, card = await _tip(standin, service, factory)
    original = make_jpeg(320, 240, (20, 120, 200), gps=GPS, make=CAMERA)

    # A reply to the card: the photo, and the question as its caption.
    question = "Có phải chiếc xe này không?"
    await _send(
        standin,
        service,
        factory.photo(officer, original, caption=question, chat=LX, reply_to=card),
    )
    sent = await _photo_to(standin, tipster, question)
    [stored] = await _stored_photos(service)
    assert sent.uploads["photo"].content == stored  # the cleaned copy, re-uploaded
    _assert_anonymous(sent, original, ("Trung úy", "Lâm", str(officer.id)))
    assert not standin.calls_for("forwardMessage") and not standin.calls_for("copyMessage")
    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None and report.status == "needs_info"
        asked = await session.scalar(select(ReportEvent).where(ReportEvent.action == "asked"))
        assert asked is not None and asked.reason == question
        assert asked.data["photo"] == (await session.scalar(select(MediaBlob.sha256)))
        relayed = await session.scalar(
            select(OutboxMessage).where(OutboxMessage.kind == "citizen_message")
        )
        assert relayed is not None and relayed.status == "sent"
    await _group_says(
        standin, t("vi", "triage.question_photo_sent", code=format_code(report.code))
    )

    # Through the question prompt: a file that is not a photo is refused, nothing relayed...
    start = len(standin.calls)
    press = factory.callback(officer, f"r:ask:{report.id}", message=card)
    await _send(standin, service, press)
    prompt = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
        timeout=10,
        start=start,
    )
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    document = factory.document(
        officer, pdf, caption="Xem biên bản này", chat=LX, reply_to=prompt.result
    )
    await _send(standin, service, document)
    await _group_says(standin, t("vi", "triage.photo_refused"), start)
    # ...a photo without words is asked for its question...
    await _send(
        standin, service, factory.photo(officer, original, chat=LX, reply_to=prompt.result)
    )
    again = await _group_says(
        standin, t("vi", "triage.photo_needs_question", code=format_code(report.code)), start
    )
    assert "force_reply" in str(again.params.get("reply_markup"))
    # ...and the photo sent again with its question goes out.
    second = "Người này có mặt ở quán không?"
    update = factory.photo(officer, original, caption=second, chat=LX, reply_to=again.result)
    await _send(standin, service, update)
    sent_again = await _photo_to(standin, tipster, second)
    _assert_anonymous(sent_again, original, ("Trung úy", "Lâm"))
    assert len(await _stored_photos(service)) == 2
    asked_texts = [
        c.text for c in standin.calls if c.chat_id == tipster.id and c.method == "sendPhoto"
    ]
    assert len(asked_texts) == 2 and "Xem biên bản" not in str(asked_texts)


@pytest.fixture
async def panel(service: Service) -> AsyncIterator[str]:
    """The service's web app (the panel among it) on a free port."""
    runner = app_runner(build_app(service))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _csrf(http: ClientSession, url: str) -> str:
    async with http.get(url) as r:
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found is not None
    return found[1]


async def test_an_officer_asks_with_a_photo_from_the_panel(standin, service, panel) -> None:
    factory = UpdateFactory(standin)
    tipster, _card = await _tip(standin, service, factory)
    async with service.session_factory() as session, session.begin():
        session.add(
            Officer(
                display_name="Đại úy Hòa",
                role="officer",
                username="hoa",
                password_hash=hash_password(PASSWORD),
                scopes=[OfficerScope(queue_key="long-xuyen")],
            )
        )
        report = await session.scalar(select(Report))
        assert report is not None
    original = make_jpeg(320, 240, (200, 120, 20), gps=GPS, make=CAMERA)
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        csrf = await _csrf(http, f"{panel}/admin/login")
        login = {"username": "hoa", "password": PASSWORD, "csrf": csrf}
        async with http.post(f"{panel}/admin/login", data=login) as r:
            assert r.status == 200
        page = f"{panel}/admin/reports/{report.code}"
        async with http.get(page) as r:
            html = await r.text()
        assert 'enctype="multipart/form-data"' in html and 'name="photo"' in html
        csrf = await _csrf(http, page)

        def form(question: str, content: bytes, name: str, mime: str, token: str) -> FormData:
            data = FormData({"csrf": token, "question": question})
            data.add_field("photo", content, filename=name, content_type=mime)
            return data

        # Without the session's token, a multipart form is refused like any other.
        bad = form("Xe màu gì?", original, "a.jpg", "image/jpeg", "wrong")
        async with http.post(f"{page}/ask", data=bad) as r:
            assert r.status == 403
        # Not a photo: refused, nothing relayed.
        pdf = form("Xem biên bản?", b"%PDF-1.4\n%%EOF\n", "a.jpg", "image/jpeg", csrf)
        async with http.post(f"{page}/ask", data=pdf) as r:
            assert r.status == 409 and t("vi", "admin.error.photo") in await r.text()
        assert await _stored_photos(service) == []
        # A photo larger than the ordinary 1 MB form limit (its EXIF makes no difference).
        big = make_jpeg(1800, 1400, (90, 90, 90), gps=GPS, make=CAMERA) + bytes(1_200_000)
        question = "Chiếc xe trong ảnh có phải xe anh/chị đã thấy?"
        async with http.post(
            f"{page}/ask", data=form(question, big, "IMG_0001.jpg", "image/jpeg", csrf)
        ) as r:
            assert r.status == 200 and "📷" in await r.text()  # the thread marks the photo
    sent = await _photo_to(standin, tipster, question)
    [stored] = await _stored_photos(service)
    assert sent.uploads["photo"].content == stored
    _assert_anonymous(sent, big, ("Đại úy", "Hòa", "IMG_0001"))
    assert not standin.calls_for("forwardMessage") and not standin.calls_for("copyMessage")
    async with service.session_factory() as session:
        asked = await session.scalar(select(ReportEvent).where(ReportEvent.action == "asked"))
        assert asked is not None and asked.data["via"] == "web"
        assert asked.data["photo"] == await session.scalar(select(MediaBlob.sha256))
