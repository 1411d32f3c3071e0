# ruff: noqa: F811 - the stand-in fixtures are imported from the flow tests
"""Images a citizen sends on Zalo: Zalo gives a URL (the bot's ``photo_url``, the OA's attachment
``payload.url``), tinbao downloads it with a size limit and a timeout (bot/zalo/fetch.py) and
cleans it like Telegram's. Through the HTTP stand-ins of Telegram, both Zalo APIs and Zalo's
file host, on SQLite and PostgreSQL:

* a JPEG with GPS EXIF is stored re-encoded, without EXIF or GPS;
* a file over ``TINBAO_ZALO_MEDIA_MAX_BYTES`` (announced, or only counted as it streams) gets the
  clear "too large" answer, and the draft goes on to a report;
* a download that hangs past ``TINBAO_ZALO_MEDIA_TIMEOUT`` gets "could not download", and the
  draft goes on to a report;
* a PDF named and typed as a JPEG is recognised by its content (kept as a cleaned PDF).
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pikepdf
import pytest
from PIL import Image
from sqlalchemy import select

from handlers.i18n import t
from storage.models import MediaBlob, Report, ReportMedia
from tests.standin.factory import make_jpeg
from tests.standin.zalo_files import ZaloFileHost
from tests.test_zalo_flows import (  # noqa: F401 (fixtures)
    BotCitizen,
    OACitizen,
    flow_settings,
    served,
    submitted,
    telegram,
    type_to_evidence,
    zalo_bot,
    zalo_oa,
)

#: ``TINBAO_ZALO_MEDIA_MAX_BYTES`` here: a photo fits, the noise image below does not.
MAX_BYTES = 64 * 1024
#: ``TINBAO_ZALO_MEDIA_TIMEOUT`` here (seconds).
TIMEOUT = 2.0
DESCRIPTION = "Kẻ gian bẻ khóa xe máy trước nhà văn hóa khóm Đông Thịnh"


@pytest.fixture
async def files() -> AsyncIterator[ZaloFileHost]:
    async with ZaloFileHost() as host:
        yield host


@pytest.fixture
async def service(telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path):
    settings = flow_settings(
        telegram,
        zalo_bot,
        zalo_oa,
        db_url,
        tmp_path,
        zalo_media_max_bytes=MAX_BYTES,
        zalo_media_timeout=TIMEOUT,
    )
    async with served(settings) as running:
        yield running


def citizen_on(channel: str, service, zalo_bot, zalo_oa) -> BotCitizen | OACitizen:
    if channel == "zalo_bot":
        return BotCitizen(service, zalo_bot, "7100000000000000301")
    return OACitizen(service, zalo_oa, "8100000000000000301")


async def finish(citizen) -> Report:
    """On from the evidence step ("1": done, or skip), contact through the bot, confirm: the
    stored report, with the draft's description."""
    await citizen.say("1")
    summary = await citizen.say("1")
    assert DESCRIPTION in summary
    code, _ = submitted(await citizen.say("có"))
    async with citizen.service.session_factory() as session:
        report = await session.scalar(select(Report).where(Report.code == code.replace("-", "")))
        assert report is not None and report.description == DESCRIPTION
        return report


async def media_of(service, report: Report) -> list[tuple[ReportMedia, MediaBlob]]:
    async with service.session_factory() as session:
        rows = await session.execute(
            select(ReportMedia, MediaBlob)
            .join(MediaBlob, MediaBlob.id == ReportMedia.blob_id)
            .where(ReportMedia.report_id == report.id)
            .order_by(ReportMedia.position)
        )
        found = [(media, blob) for media, blob in rows.all()]
        for _, blob in found:
            await session.refresh(blob, ["content"])
        return found


@pytest.mark.parametrize("channel", ["zalo_bot", "zalo_oa"])
async def test_a_gps_photo_from_a_zalo_citizen_is_stored_without_exif(
    channel, service, zalo_bot, zalo_oa, files
):
    citizen = citizen_on(channel, service, zalo_bot, zalo_oa)
    await type_to_evidence(citizen, DESCRIPTION)
    original = make_jpeg(64, 48, gps=(10.3759, 105.4185), make="TinbaoPhoneMaker")
    assert b"GPS" in original or b"TinbaoPhoneMaker" in original
    answer = await citizen.send(citizen.image(files.add("IMG_0001.jpg", original)))
    assert t("vi", "ev.received", count=1) in answer
    report = await finish(citizen)
    [(media, blob)] = await media_of(service, report)
    assert media.kind == "photo" and blob.mime == "image/jpeg"
    stored = blob.content
    assert stored != original
    assert b"Exif" not in stored and b"GPS" not in stored and b"TinbaoPhoneMaker" not in stored
    image = Image.open(io.BytesIO(stored))
    assert image.size == (64, 48) and not image.getexif()
    async with service.session_factory() as session:  # nothing uncleaned kept anywhere
        for content in (await session.scalars(select(MediaBlob.content))).all():
            assert b"GPS" not in content and b"TinbaoPhoneMaker" not in content


def _noise_jpeg() -> bytes:
    """A real JPEG well over :data:`MAX_BYTES` (noise does not compress)."""
    image = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    data = out.getvalue()
    assert len(data) > 2 * MAX_BYTES
    return data


@pytest.mark.parametrize(
    ("channel", "serving"),
    [("zalo_bot", "sized"), ("zalo_oa", "unsized"), ("zalo_bot", "unsized")],
)
async def test_a_photo_over_the_limit_is_refused_clearly_and_the_draft_goes_on(
    channel, serving, service, zalo_bot, zalo_oa, files
):
    citizen = citizen_on(channel, service, zalo_bot, zalo_oa)
    await type_to_evidence(citizen, DESCRIPTION)
    url = files.add("IMG_0002.jpg", _noise_jpeg(), serving=serving)
    answer = await citizen.send(citizen.image(url))
    assert t("vi", "ev.too_large_image") in answer
    assert t("vi", "ev.received", count=0) in answer  # still at the evidence step
    assert files.requests["IMG_0002.jpg"] == 1
    report = await finish(citizen)
    assert await media_of(service, report) == []
    async with service.session_factory() as session:
        assert (await session.scalars(select(MediaBlob))).all() == []  # nothing of it stored


@pytest.mark.parametrize("channel", ["zalo_bot", "zalo_oa"])
async def test_a_download_that_hangs_gets_an_answer_and_the_draft_goes_on(
    channel, service, zalo_bot, zalo_oa, files
):
    citizen = citizen_on(channel, service, zalo_bot, zalo_oa)
    await type_to_evidence(citizen, DESCRIPTION)
    url = files.add("IMG_0003.jpg", make_jpeg(64, 48), serving="stalled")
    answer = await citizen.send(citizen.image(url))
    assert t("vi", "ev.failed") in answer
    # The citizen sends it again, and this time it comes.
    again = await citizen.send(citizen.image(files.add("IMG_0004.jpg", make_jpeg(64, 48))))
    assert t("vi", "ev.received", count=1) in again
    report = await finish(citizen)
    [(media, _)] = await media_of(service, report)
    assert media.kind == "photo"


def _pdf_with_author() -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.docinfo["/Author"] = "Nguyen Van A"
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


@pytest.mark.parametrize("channel", ["zalo_bot", "zalo_oa"])
async def test_a_pdf_disguised_as_a_jpeg_is_recognised_by_its_content(
    channel, service, zalo_bot, zalo_oa, files
):
    citizen = citizen_on(channel, service, zalo_bot, zalo_oa)
    await type_to_evidence(citizen, DESCRIPTION)
    disguised = _pdf_with_author()
    url = files.add("IMG_0005.jpg", disguised, content_type="image/jpeg")
    answer = await citizen.send(citizen.image(url))
    assert t("vi", "ev.received", count=1) in answer
    report = await finish(citizen)
    [(media, blob)] = await media_of(service, report)
    assert media.kind == "document" and blob.mime == "application/pdf"  # not taken for a photo
    assert b"Nguyen Van A" not in blob.content  # cleaned as a PDF
    with pikepdf.open(io.BytesIO(blob.content)) as pdf:
        assert len(pdf.pages) == 1 and "/Author" not in pdf.docinfo
