# ruff: noqa: F811 - the stand-in fixtures are imported from the flow tests
"""An officer's question with a photo reaches the tipster as an image on every channel: the Zalo
OA uploads it and sends a media template, the Zalo bot sends a short-lived signed link that Zalo
fetches from tinbao's own server, Telegram sends it with sendPhoto. Through the HTTP stand-ins,
on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import select

from admin.web import build_web_app
from bot.zalo.photo_links import LINK_SECONDS, PhotoLinks
from handlers.events import Reply
from handlers.media import clean_image
from handlers.officers import Registry
from handlers.report_actions import ReportActions
from handlers.security import Keyring
from storage.models import Report
from tests.e2e import running_service, service_settings
from tests.standin.zalo_bot import DEFAULT_TOKEN
from tests.standin.zalo_oa import APP_ID, APP_SECRET, FIRST_REFRESH_TOKEN, OA_SECRET_KEY
from tests.test_zalo_flows import (  # noqa: F401 (fixtures)
    ADMIN_ID,
    DUTY,
    LX,
    BotCitizen,
    OACitizen,
    card_in_group,
    telegram,
    type_tip,
    until,
    zalo_bot,
    zalo_oa,
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def service(telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path):
    """The service with its web server at a known address, which is its public URL."""
    port = _free_port()
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        'units = ["30307", "30292"]\n',
        encoding="utf-8",
    )
    settings = service_settings(
        telegram,
        db_url,
        tmp_path,
        zalo_bot_token=DEFAULT_TOKEN,
        zalo_bot_api_url=zalo_bot.api_url,
        zalo_bot_polling_timeout=1,
        zalo_oa_app_id=APP_ID,
        zalo_oa_secret_key=OA_SECRET_KEY,
        zalo_app_secret=APP_SECRET,
        zalo_oa_refresh_token=FIRST_REFRESH_TOKEN,
        zalo_oa_api_url=zalo_oa.url,
        zalo_oauth_url=zalo_oa.url,
        queues_file=queues,
        duty_chat_id=DUTY,
        admin_telegram_ids=[ADMIN_ID],
        public_url=f"http://127.0.0.1:{port}",
    )
    async with running_service(settings) as running:
        runner = aiohttp.web.AppRunner(build_web_app(running))
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
        running.test_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        try:
            yield running
        finally:
            await runner.cleanup()


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    return clean_image(buffer.getvalue()).content


async def ask_with_photo(service, code: str, question: str, photo: bytes) -> None:
    """The officer asks on the report, with a photo (as the panel or the chat would)."""
    async with service.session_factory() as session, session.begin():
        report = await session.scalar(select(Report).where(Report.code == code.replace("-", "")))
        officer = await Registry(session).by_telegram(ADMIN_ID)
        assert report is not None and officer is not None
        await ReportActions(session, officer, service.triage).ask(
            report, question, clean_image(photo)
        )
    service.messenger.kick()


async def test_a_question_with_a_photo_reaches_a_zalo_oa_citizen_as_an_uploaded_image(
    service, telegram, zalo_oa
):
    citizen = OACitizen(service, zalo_oa, "8100000000000000091")
    code, _ = await type_tip(citizen, "Trộm xe đạp trước trường Long Xuyên")
    await card_in_group(telegram, LX.id, code)
    photo = _photo()
    await ask_with_photo(service, code, "Có phải người này không?", photo)
    await until(lambda: _async(bool(zalo_oa.images(citizen.user_id))))
    (sent,) = zalo_oa.images(citizen.user_id)
    assert sent.image == photo  # the cleaned bytes, uploaded
    assert "Có phải người này không?" in sent.text  # the question as the template's text
    assert len(zalo_oa.uploads) == 1


async def test_a_question_with_a_photo_reaches_a_zalo_bot_citizen_by_a_signed_link(
    service, telegram, zalo_bot
):
    citizen = BotCitizen(service, zalo_bot, "7100000000000000091")
    code, _ = await type_tip(citizen, "Trộm gà ở khóm Bình Khánh")
    await card_in_group(telegram, LX.id, code)
    photo = _photo()
    await ask_with_photo(service, code, "Con gà màu gì, giống con này không?", photo)
    await until(lambda: _async(bool(zalo_bot.photos)))
    (sent,) = zalo_bot.photos
    assert sent.chat_id == citizen.user_id
    assert sent.content == photo  # Zalo fetched it from tinbao's own server
    assert sent.url.startswith(service.test_url + "/zalo/bot/photo/")
    assert citizen.user_id not in sent.url and code.replace("-", "") not in sent.url
    assert "Con gà màu gì" in sent.caption
    # A link that was tampered with, or one for another image, gives nothing away.
    async with aiohttp.ClientSession() as http:
        async with http.get(sent.url[:-1] + ("0" if sent.url[-1] != "0" else "1")) as r:
            assert r.status == 404
        async with http.get(sent.url) as r:
            assert r.status == 200 and await r.read() == photo


async def test_a_photo_link_expires_and_serves_only_officers_photos(service):
    keyring = Keyring(b"k" * 32)
    now = [1_000_000.0]
    links = PhotoLinks(
        service.session_factory, keyring, "https://tinbao.example", clock=lambda: now[0]
    )
    link = links.link("a" * 64)
    sha, expires, signature = link.split("/")[-3:]
    assert links.valid(sha, expires, signature)
    now[0] += LINK_SECONDS + 1
    assert not links.valid(sha, expires, signature)
    assert not links.valid(sha, str(int(expires) + 10), signature)
    # Without a public address there are no links (the caption goes alone).
    assert not PhotoLinks(service.session_factory, keyring, None).enabled


async def test_a_question_with_a_photo_reaches_a_telegram_citizen_as_a_photo(service, telegram):
    sender = service.channels.get("telegram")
    photo = _photo()
    ids = await sender.send("424242", [Reply(text="Có phải người này không?", photo=photo)])
    call = await telegram.wait_for(lambda c: c.method == "sendPhoto" and c.ok, timeout=10)
    assert call.params.get("caption") == "Có phải người này không?"
    assert ids == [str(call.result["message_id"])]
    long_text = "x" * 1500  # too long for a caption: the photo, then the text
    await sender.send("424242", [Reply(text=long_text, photo=photo)])
    await telegram.wait_for(
        lambda c: c.method == "sendMessage" and c.ok and c.text == long_text, timeout=10
    )


async def _async(value: bool) -> bool:
    return value
