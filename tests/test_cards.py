"""Officer-facing cards: what they say, what they never say, and their limits (both backends)."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image
from sqlalchemy import select

from handlers.cards import (
    CAPTION_LIMIT,
    DIGEST_MAX,
    TEXT_LIMIT,
    alert_card,
    digest_card,
    reminder_card,
    report_card,
    utf16_len,
)
from handlers.events import Attachment
from handlers.i18n import t
from handlers.security import format_code, new_tracking_code
from storage.models import MediaBlob, Report, ReportMedia
from storage.repositories import Reports
from tests.driver import FileStore, citizen, label, make_flow, sync_units
from tests.standin.factory import MP4_CREATED, MP4_LOCATION, make_jpeg, make_mp4
from tests.standin.server import parse_html

TIPSTER_ID = 987_654_321
SCRIPT = "<script>alert('x')</script>"
CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


class SquareLocator:
    """Operator geometry reduced to one square around Long Xuyên (unit 30307)."""

    def locate(self, latitude: float, longitude: float) -> str | None:
        if 10.3 <= latitude <= 10.45 and 105.35 <= longitude <= 105.5:
            return "30307"
        return None


async def add_report(session_factory, **fields) -> int:
    values = {
        "code": new_tracking_code(),
        "kind": "tip",
        "category": "theft",
        "unit_code": "30307",
        "description": "Mất xe máy trước chợ",
        "contact_mode": "none",
        "pin_hash": "x",
        "locale": "vi",
        "channel": "telegram",
        **fields,
    }
    async with session_factory() as session, session.begin():
        report = await Reports(session).add(Report(**values), [])
        return report.id


def assert_valid_html(text: str) -> str:
    plain, _ = parse_html(text)  # raises like Telegram on a broken tag or stray "<"
    assert utf16_len(plain) <= TEXT_LIMIT
    return plain


async def test_a_real_tip_card_never_names_the_tipster_and_escapes_their_text(session_factory):
    c = citizen(session_factory, TIPSTER_ID, language_code="vi")
    video = make_mp4()
    c.files = FileStore(
        {"PHOTO1": make_jpeg(gps=(10.38, 105.42), make="CameraMaker"), "VID1": video}
    )
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.drugs"))
    await c.say("long xuyen")
    await c.press("Phường Long Xuyên")
    await c.press(label("vi", "when.today"))
    await c.say(f"{SCRIPT} bán ma túy ở quán cà phê & tiệm net")
    await c.attach(Attachment("photo", "PHOTO1", 2000, "image/jpeg"), caption=f"ảnh {SCRIPT}")
    await c.attach(Attachment("video", "VID1", 1000, "video/mp4"))
    await c.press(label("vi", "ev.done"))
    await c.press(label("vi", "contact.relay", mark="✓ "))
    await c.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None
        card = await report_card(session, report.id, locale="vi")
        blob, video_blob = (
            await session.scalars(select(MediaBlob.content).order_by(MediaBlob.id))
        ).all()

    plain = assert_valid_html(card.text)
    assert str(TIPSTER_ID) not in card.text
    assert SCRIPT not in card.text and "&lt;script&gt;" in card.text
    assert SCRIPT in plain  # officers read exactly what the tipster wrote
    assert format_code(report.code) in plain
    for expected in ("Ma túy", "Phường Long Xuyên", "Trong ngày", "Tiếp nhận:", "Mới tiếp nhận"):
        assert expected in plain, expected
    datas = [b.data for row in card.buttons for b in row]
    assert all(len(d.encode()) <= 64 and str(TIPSTER_ID) not in d for d in datas)
    assert f"r:ack:{report.id}" not in datas  # a tip has nothing to acknowledge
    assert "2 tệp" in plain
    # Both files were downloaded, cleaned and stored: none is passed on by the channel's id.
    assert [(m.kind, m.file_ref, m.file_name) for m in card.media] == [
        ("photo", None, "evidence-1.jpg"),
        ("video", None, "evidence-2.mp4"),
    ]
    assert "⚠️" not in plain  # every file was cleaned
    photo, clip = card.media
    assert clip.content == video_blob and clip.content is not None and clip.mime == "video/mp4"
    assert MP4_LOCATION not in clip.content and MP4_CREATED not in clip.content
    assert len(clip.content) == len(video)  # blanked in place, nothing moved
    assert photo.content == blob and photo.content is not None
    assert not Image.open(io.BytesIO(photo.content)).getexif()  # the cleaned copy, no EXIF
    assert photo.caption is not None and photo.caption.startswith(f"📎 {format_code(report.code)}")
    assert SCRIPT in photo.caption  # captions go as plain text, no parse mode
    assert all(str(TIPSTER_ID) not in (m.caption or "") for m in card.media)


async def test_an_emergency_card_has_injured_map_link_and_acknowledge(session_factory):
    flow = make_flow()
    flow.locator = SquareLocator()
    c = citizen(session_factory, TIPSTER_ID, flow=flow)
    await c.command("accident")
    await c.location(10.38, 105.42)
    await c.press(label("vi", "acc.inj_2"))
    await c.press(label("vi", "acc.send_now"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None
        card = await report_card(session, report.id, locale="vi")
    plain = assert_valid_html(card.text)
    assert plain.startswith("🚑")
    assert "khoảng 2 người" in plain
    assert 'href="https://www.google.com/maps?q=10.380000,105.420000"' in card.text
    assert card.location is not None
    assert (card.location.latitude, card.location.longitude) == (10.38, 105.42)
    [ack] = [b for row in card.buttons for b in row if b.data == f"r:ack:{report.id}"]
    assert card.buttons[0] == [ack]  # the first thing an officer sees
    assert str(TIPSTER_ID) not in card.text


async def test_an_acknowledged_emergency_has_no_button_and_english_works(session_factory):
    report_id = await add_report(
        session_factory,
        kind="emergency",
        category=None,
        status="acknowledged",
        injured="none",
        description=None,
    )
    async with session_factory() as session:
        card = await report_card(session, report_id, locale="en")
    plain = assert_valid_html(card.text)
    assert f"r:ack:{report_id}" not in [b.data for row in card.buttons for b in row]
    assert "TRAFFIC ACCIDENT EMERGENCY" in plain and "Injured: No" in plain
    assert "Acknowledged, units on the way" in plain


@pytest.mark.parametrize("header", ["escalated", "officer.header.rerouted", "no-such-header"])
async def test_headers(session_factory, header):
    report_id = await add_report(session_factory)
    async with session_factory() as session:
        card = await report_card(session, report_id, locale="vi", header_key=header)
    first = card.text.splitlines()[0]
    if header == "no-such-header":
        assert first.startswith("🚨")
    else:
        assert first == t("vi", f"officer.header.{header.rsplit('.', 1)[-1]}")


async def test_a_long_description_is_cut_to_fit_with_a_note(session_factory):
    description = "<&>" * 3000  # 9000 characters, each of which escapes to 4-5
    report_id = await add_report(session_factory, description=description)
    async with session_factory() as session:
        card = await report_card(session, report_id, locale="vi")
    assert utf16_len(card.text) <= TEXT_LIMIT
    plain = assert_valid_html(card.text)
    assert t("vi", "officer.card.truncated", total=9000) in plain
    assert "<&><&>" in plain
    assert plain.rstrip().endswith(t("vi", "officer.status.new") + " · Người xử lý: chưa có")


async def test_a_caption_is_cut_to_telegrams_limit(session_factory):
    async with session_factory() as session, session.begin():
        report = Report(
            code=new_tracking_code(),
            kind="tip",
            category="other",
            contact_mode="none",
            pin_hash="x",
            locale="vi",
            channel="telegram",
        )
        await Reports(session).add(
            report, [ReportMedia(kind="document", file_ref="DOC1", caption="x" * 2000)]
        )
    async with session_factory() as session:
        card = await report_card(session, report.id, locale="vi")
    assert len(card.media[0].caption or "") == CAPTION_LIMIT
    assert t("vi", "officer.card.no_unit") in card.text


async def test_a_digest_lists_up_to_30_with_an_open_button_each(session_factory):
    ids = [await add_report(session_factory) for _ in range(DIGEST_MAX)]
    ids[3] = await add_report(session_factory, kind="emergency", category=None)
    async with session_factory() as session:
        card = await digest_card(session, ids, locale="vi")
        with pytest.raises(ValueError, match="at most 30"):
            await digest_card(session, [*ids, ids[0]], locale="vi")
        codes = {
            r.id: format_code(r.code)
            for r in (await session.scalars(select(Report).where(Report.id.in_(ids)))).all()
        }
    plain = assert_valid_html(card.text)
    lines = [line for line in plain.splitlines() if CODE_RE.search(line)]
    assert len(lines) == DIGEST_MAX
    assert lines[3].startswith("4. 🚑 ")
    assert "Trộm cắp tài sản" in lines[0] and "Phường Long Xuyên" in lines[0]
    buttons = [b for row in card.buttons for b in row]
    assert [(b.label, b.data) for b in buttons] == [(codes[i], f"r:open:{i}") for i in ids]
    assert all(len(b.data.encode()) <= 64 for b in buttons)


async def test_reminders_and_alerts(session_factory):
    emergency = await add_report(session_factory, kind="emergency", category=None)
    tip = await add_report(session_factory)
    async with session_factory() as session:
        late = await reminder_card(session, emergency, locale="vi", reason="unacknowledged")
        waiting = await reminder_card(session, tip, locale="en", reason="unclaimed")
    assert_valid_html(late.text)
    assert [[b.data for b in row] for row in late.buttons] == [
        [f"r:ack:{emergency}"],
        [f"r:open:{emergency}"],
    ]
    assert "has not been claimed" in waiting.text
    assert [[b.data for b in row] for row in waiting.buttons] == [[f"r:open:{tip}"]]
    alert = alert_card(
        locale="vi",
        reason="chat_unreachable",
        queue="<Đội 1>",
        chat="-100123",
        error="Bad Request: chat not found <x>",
    )
    plain = assert_valid_html(alert.text)
    assert "<Đội 1>" in plain and "chat not found <x>" in plain
    assert "&lt;Đội 1&gt;" in alert.text
