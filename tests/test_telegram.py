"""Citizens on Telegram: the real python-telegram-bot Application over HTTP to the stand-in."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image
from sqlalchemy import select

from handlers.i18n import t
from storage.models import MediaBlob, Report, ReportMedia
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory, make_jpeg

CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path):
    # ``engine`` migrates the database first: against PostgreSQL, `tinbao run` refuses to.
    async with running_service(service_settings(standin, db_url, tmp_path)) as running:
        yield running


async def file_tip(chat: Chat, locale: str, description: str) -> str:
    await chat.command("start")
    await chat.press(t(locale, "menu.tip"))
    await chat.press(t(locale, "cat.theft"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t(locale, "when.now"))
    await chat.say(description)
    await chat.press(t(locale, "ev.skip"))
    await chat.press(t(locale, "contact.relay", mark="✓ "))
    calls = await chat.press(t(locale, "summary.confirm"))
    text = "\n".join(chat.texts(calls))
    match = CODE_RE.search(text)
    assert match, text
    return match.group(0)


async def test_a_tip_in_vietnamese_over_polling(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    calls = await chat.command("start")
    texts = chat.texts(calls)
    # The greeting, the one-time warning and the menu arrive as one message.
    assert len(texts) == 1
    assert texts[0].startswith(t("vi", "greet.intro"))
    assert t("vi", "greet.false_report_warning") in texts[0]
    assert texts[0].endswith(t("vi", "menu.title"))
    code = await file_tip(chat, "vi", "Kẻ gian trộm xe máy trước chợ Long Xuyên")
    assert not standin.calls_for("forwardMessage")
    async with service.session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None and report.code == code.replace("-", "")
    # Every press was answered, and pressed messages were edited into the next step.
    assert standin.calls_for("answerCallbackQuery")
    edits = standin.calls_for("editMessageText")
    assert any(c.text.startswith(f"✓ {t('vi', 'menu.tip')}") for c in edits)


async def test_a_tip_in_english(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.en_user)
    calls = await chat.command("start")
    assert chat.texts(calls)[0].startswith(t("en", "greet.intro"))
    await file_tip(chat, "en", "A man steals motorbikes near the market at night")


async def test_a_jpeg_with_gps_exif_is_stored_without_it(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say(t("vi", "place.dont_know"))
    await chat.press(t("vi", "when.today"))
    await chat.say("Ảnh chụp kẻ trộm đang bẻ khóa xe")
    original = make_jpeg(64, 48, gps=(10.3759, 105.4185), make="TinbaoPhoneMaker")
    assert b"GPS" in original or b"TinbaoPhoneMaker" in original
    document = factory.document(
        chat.user, original, file_name="IMG_0001.jpg", mime_type="image/jpeg"
    )
    calls = await chat.send(document)
    assert chat.texts(calls)[0].startswith(t("vi", "ev.received", count=1))
    await chat.press(t("vi", "ev.done"))
    await chat.press(t("vi", "contact.none", mark=""))
    await chat.press(t("vi", "summary.confirm"))
    async with service.session_factory() as session:
        media = await session.scalar(select(ReportMedia))
        assert media is not None and media.kind == "photo" and media.file_ref is None
        content = await session.scalar(
            select(MediaBlob.content).where(MediaBlob.id == media.blob_id)
        )
    assert content is not None
    assert b"Exif" not in content and b"GPS" not in content and b"TinbaoPhoneMaker" not in content
    image = Image.open(io.BytesIO(content))
    assert not image.getexif() and image.size == (64, 48)


async def test_an_oversized_file_gets_a_clear_message(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say(t("vi", "place.dont_know"))
    await chat.press(t("vi", "when.today"))
    await chat.say("Video quay cảnh trộm cắp ở chợ đêm")
    video = factory.video(chat.user)
    video["message"]["video"]["file_size"] = 25 * 1024 * 1024
    calls = await chat.send(video)
    assert chat.texts(calls)[0].startswith(t("vi", "ev.too_large", limit_mb=20))


async def test_a_sticker_where_text_is_expected(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say(t("vi", "place.dont_know"))
    await chat.press(t("vi", "when.today"))
    calls = await chat.send(factory.sticker(chat.user))
    text = chat.texts(calls)[0]
    assert text.startswith(t("vi", "err.unsupported"))
    assert t("vi", "desc.ask", minimum=10, limit=4000) in text


async def test_forged_callback_data_is_answered(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    calls = await chat.send(factory.callback(chat.user, "sum:ok;drop"))
    answers = [c for c in calls if c.method == "answerCallbackQuery"]
    assert answers and answers[0].params.get("text") == t("vi", "err.button_unknown")


async def test_group_messages_are_not_treated_as_citizens(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    calls = await chat.send(factory.group_text(factory.vi_user, "hello"))
    assert not [c for c in calls if c.method == "sendMessage"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_polling_survives_a_restart_mid_draft(standin, db_url, tmp_path):
    factory = UpdateFactory(standin)
    settings = service_settings(standin, db_url, tmp_path)
    async with running_service(settings) as first:
        chat = Chat(standin, factory, first, factory.vi_user)
        await chat.command("start")
        await chat.press(t("vi", "menu.tip"))
        await chat.press(t("vi", "cat.drugs"))
    async with running_service(settings) as second:
        chat = Chat(standin, factory, second, factory.vi_user)
        calls = await chat.say("chau doc")
        assert chat.texts(calls)[0].startswith(t("vi", "place.pick"))
