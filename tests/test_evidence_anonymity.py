"""Evidence reaches officers recognised by content, cleaned, and under a neutral name."""

from __future__ import annotations

import asyncio
import io

import pikepdf
import pytest
from PIL import Image

from handlers import media
from handlers.i18n import t
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import MP4_CREATED, MP4_LOCATION, UpdateFactory, make_jpeg, make_mp4

DUTY_CHAT = -1001234567890


def _pdf_with_author() -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.docinfo["/Author"] = "Nguyen Van A"
    with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
        meta["dc:creator"] = ["Nguyen Van A"]
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def test_a_pdf_loses_its_author():
    original = _pdf_with_author()
    assert b"Nguyen Van A" in original
    cleaned = media.clean_evidence(original)
    assert isinstance(cleaned, media.CleanFile)
    assert cleaned.cleaned and cleaned.mime == "application/pdf"
    assert b"Nguyen Van A" not in cleaned.content
    with pikepdf.open(io.BytesIO(cleaned.content)) as pdf:
        assert len(pdf.pages) == 1 and "/Author" not in pdf.docinfo


def test_an_mp4_loses_its_location_and_times_without_moving_anything():
    original = make_mp4()
    assert MP4_LOCATION in original and MP4_CREATED in original
    cleaned = media.clean_evidence(original)
    assert isinstance(cleaned, media.CleanFile) and cleaned.cleaned
    assert cleaned.mime == "video/mp4" and len(cleaned.content) == len(original)
    assert b"105.4185" not in cleaned.content and b"\xa9xyz" not in cleaned.content
    assert MP4_CREATED not in cleaned.content
    assert cleaned.content.endswith(b"mdat" + b"\x01" * 32)


def test_an_unknown_or_damaged_file_is_passed_on_marked_not_cleaned():
    for data in (b"PK\x03\x04 some zip", b"%PDF-1.7 garbage", b"\x00\x00\x00\x10ftypisom\xff"):
        result = media.clean_evidence(data)
        assert isinstance(result, media.CleanFile)
        assert not result.cleaned and result.mime == media.UNCLEANED_MIME
        assert not media.is_cleaned(result.mime)
    assert media.neutral_name(0, "image/jpeg") == "evidence-1.jpg"
    assert media.neutral_name(2, media.UNCLEANED_MIME) == "evidence-3.bin"


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path):
    settings = service_settings(standin, db_url, tmp_path, duty_chat_id=DUTY_CHAT)
    async with running_service(settings) as running:
        yield running


async def _uploads_to_officers(standin, count: int) -> list:
    for _ in range(1000):
        calls = [
            c
            for c in standin.calls
            if c.method in ("sendPhoto", "sendDocument", "sendVideo") and c.uploads
        ]
        if len(calls) >= count:
            return calls
        await asyncio.sleep(0.02)
    raise AssertionError([c.method for c in standin.calls])


async def test_disguised_jpeg_and_pdf_reach_officers_cleaned_under_neutral_names(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say(t("vi", "place.dont_know"))
    await chat.press(t("vi", "when.today"))
    await chat.say("Ảnh chụp kẻ trộm đang bẻ khóa xe")
    jpeg = make_jpeg(64, 48, gps=(10.3759, 105.4185), make="TinbaoPhoneMaker")
    disguised = factory.document(
        chat.user, jpeg, file_name="scan_NguyenVanA.bin", mime_type="application/octet-stream"
    )
    calls = await chat.send(disguised)
    assert chat.texts(calls)[0].startswith(t("vi", "ev.received", count=1))
    pdf = factory.document(chat.user, _pdf_with_author(), file_name="don_to_cao_NguyenVanA.pdf")
    await chat.send(pdf)
    await chat.press(t("vi", "ev.done"))
    await chat.press(t("vi", "contact.none", mark=""))
    await chat.press(t("vi", "summary.confirm"))

    uploads = await _uploads_to_officers(standin, 2)
    sent = {
        upload.filename: content
        for call in uploads
        for upload, content in ((u, call.files[n]) for n, u in call.uploads.items())
    }
    assert set(sent) == {"evidence-1.jpg", "evidence-2.pdf"}, sent.keys()
    photo = sent["evidence-1.jpg"]
    assert photo != jpeg
    assert b"Exif" not in photo and b"GPS" not in photo and b"TinbaoPhoneMaker" not in photo
    assert not Image.open(io.BytesIO(photo)).getexif()
    assert b"Nguyen Van A" not in sent["evidence-2.pdf"]
    assert not standin.calls_for("forwardMessage") and not standin.calls_for("copyMessage")
    for call in standin.calls:
        assert "NguyenVanA" not in str(call.params)
    card = next(
        c for c in standin.calls_for("sendMessage") if c.params.get("chat_id") == DUTY_CHAT
    )
    assert "⚠️" not in str(card.params.get("text"))  # both files were cleaned
