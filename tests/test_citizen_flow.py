"""The tip conversation, end to end through the dispatcher, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from handlers.citizen import State
from handlers.events import Attachment
from handlers.media import neutral_name
from handlers.security import parse_code
from storage.models import (
    ContactRoute,
    Conversation,
    MediaBlob,
    OutboxMessage,
    Report,
    ReportEvent,
    ReportMedia,
)
from tests.driver import FileStore, citizen, label, make_flow, sync_units
from tests.standin.factory import MP4_CREATED, MP4_LOCATION, make_mp4

CODE_RE = re.compile(r"([2-9A-Z]{5}-[2-9A-Z]{5})")
PIN_RE = re.compile(r"(?:PIN|Mã PIN): (\d{6})")


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


async def file_tip(
    c, locale: str, *, description: str = "Có người bán ma túy ở quán cà phê"
) -> tuple[str, str]:
    await c.command("start")
    await c.press(label(locale, "menu.tip"))
    await c.press(label(locale, "cat.drugs"))
    await c.say("long xuyen")
    await c.press("Phường Long Xuyên")
    await c.press(label(locale, "when.today"))
    await c.say(description)
    await c.press(label(locale, "ev.skip"))
    await c.press(label(locale, "contact.relay", mark="✓ "))
    await c.press(label(locale, "summary.confirm"))
    text = "\n".join(c.texts())
    code = CODE_RE.search(text)
    pin = PIN_RE.search(text)
    assert code and pin, text
    return code.group(1), pin.group(1)


async def count(session_factory, model) -> int:
    async with session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_complete_tip_in_vietnamese(session_factory):
    c = citizen(session_factory, 111, language_code="vi")
    code, pin = await file_tip(c, "vi")
    assert "Đã gửi tin báo" in c.texts()[0]
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report is not None
        assert report.code == parse_code(code)
        assert report.category == "drugs"
        assert report.unit_code == "30307"
        assert report.occurred == "today"
        assert report.status == "new"
        assert report.locale == "vi"
        assert report.pin_hash != pin and pin not in report.pin_hash
        events = (await session.scalars(select(ReportEvent))).all()
        assert [(e.action, e.to_status, e.actor_kind, e.actor_id) for e in events] == [
            ("submitted", "new", "citizen", None)
        ]
        outbox = (await session.scalars(select(OutboxMessage))).all()
        assert sorted((o.kind, o.destination, o.report_id) for o in outbox) == [
            ("report_card", "unit:30307", report.id),
            ("timer.remind_unclaimed", "timer", report.id),
        ]
        route = await session.scalar(select(ContactRoute))
        assert route is not None and "111" not in route.route
        conversation = await session.scalar(select(Conversation))
        assert conversation is not None and conversation.state == "idle"
        assert "draft" not in conversation.data


async def test_complete_tip_in_english(session_factory):
    c = citizen(session_factory, 222, language_code="en")
    code, pin = await file_tip(c, "en", description="Two men sell drugs behind the market")
    assert "Your report has been sent" in c.texts()[0]
    await c.command("status", f"{code} {pin}")
    assert any("Received" in text and code in text for text in c.texts())


async def test_status_check_and_wrong_pin_rate_limit(session_factory):
    flow = make_flow(pin_attempts_per_code=3, pin_attempts_per_sender=100)
    c = citizen(session_factory, 333, flow=flow)
    code, pin = await file_tip(c, "vi")
    wrong = "000000" if pin != "000000" else "111111"
    for _ in range(3):
        await c.command("status", f"{code} {wrong}")
        assert c.texts()[0] == label("vi", "status.wrong")
    # The code is now locked, even with the right PIN, and even from another sender.
    other = citizen(session_factory, 334, flow=flow)
    await other.command("status", f"{code} {pin}")
    assert other.texts()[0].startswith(label("vi", "status.locked", minutes=15)[:20])


async def test_status_per_sender_limit(session_factory):
    flow = make_flow(pin_attempts_per_code=100, pin_attempts_per_sender=2)
    c = citizen(session_factory, 444, flow=flow)
    code, pin = await file_tip(c, "vi")
    await c.command("status", "ABCDE-FGHJK 123456")
    await c.command("status", "ABCDE-FGHJK 123456")
    await c.command("status", f"{code} {pin}")
    assert "locked" in c.texts()[0] or "sai quá nhiều" in c.texts()[0]


async def test_status_step_by_step(session_factory):
    c = citizen(session_factory, 445)
    code, pin = await file_tip(c, "vi")
    await c.command("status")
    assert label("vi", "status.ask_code") in c.texts()
    await c.say("not a code")
    assert label("vi", "status.bad_code") in c.texts()
    await c.say(code.lower().replace("-", " "))
    assert label("vi", "status.ask_pin") in c.texts()
    await c.say(pin)
    assert any(label("vi", "status.new") in text for text in c.texts())


async def test_report_rate_limit_keeps_the_draft(session_factory):
    flow = make_flow(report_rate_limit=1)
    c = citizen(session_factory, 555, flow=flow)
    await file_tip(c, "vi")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    await c.say(label("vi", "place.dont_know"))
    await c.press(label("vi", "when.unknown"))
    await c.say("Trộm xe máy trước cửa nhà tôi tối qua")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.none", mark=""))
    await c.press(label("vi", "summary.confirm"))
    assert c.texts()[0] == label("vi", "tip.rate_limited", minutes=60)
    assert await count(session_factory, Report) == 1
    async with session_factory() as session:
        conversation = await session.scalar(select(Conversation))
        assert conversation.state == State.SUMMARY
        assert conversation.data["draft"]["category"] == "theft"


async def test_cancel_discards_the_draft(session_factory):
    c = citizen(session_factory, 666)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    await c.command("cancel")
    assert c.texts()[0] == label("vi", "tip.cancelled")
    async with session_factory() as session:
        conversation = await session.scalar(select(Conversation))
        assert "draft" not in conversation.data and conversation.state == "idle"


async def test_a_fresh_flow_continues_a_half_finished_draft(session_factory):
    first = citizen(session_factory, 777)
    await first.command("start")
    await first.press(label("vi", "menu.tip"))
    await first.press(label("vi", "cat.robbery"))
    await first.say("chau doc")
    pick = first.button("Phường Châu Đốc")
    # A "restart": a brand-new flow and dispatcher over the same database.
    second = citizen(session_factory, 777)
    await second.press_data(pick.data)
    assert label("vi", "when.ask") in second.texts()
    await second.press(label("vi", "when.now"))
    await second.say("Hai thanh niên cướp điện thoại ở chợ")
    await second.press(label("vi", "ev.skip"))
    await second.press(label("vi", "contact.none", mark=""))
    await second.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report.category == "robbery" and report.unit_code is not None


async def test_the_same_update_twice_gives_one_report(session_factory):
    c = citizen(session_factory, 888)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.drugs"))
    await c.say(label("vi", "place.dont_know"))
    await c.press(label("vi", "when.now"))
    await c.say("Mua bán ma túy công khai ở bến xe")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.none", mark=""))
    confirm = c.button(label("vi", "summary.confirm"))
    first = await c.press_data(confirm.data, update_id=424242)
    second = await c.press_data(confirm.data, update_id=424242)
    assert first is not None and second is None
    assert await count(session_factory, Report) == 1
    # A second press of the same button (a new update) is refused as stale, not re-submitted.
    third = await c.press_data(confirm.data)
    assert third is not None and third.notice == label("vi", "err.button_stale")
    assert await count(session_factory, Report) == 1


async def test_edit_from_the_summary_returns_to_it(session_factory):
    c = citizen(session_factory, 999, language_code="en")
    await c.command("start")
    await c.press(label("en", "menu.tip"))
    await c.press(label("en", "cat.theft"))
    await c.say(label("en", "place.dont_know"))
    await c.press(label("en", "when.earlier"))
    await c.say("last Saturday night")
    await c.say("Someone stole my neighbour's motorbike")
    await c.press(label("en", "ev.skip"))
    await c.press(label("en", "contact.relay", mark="✓ "))
    await c.press(label("en", "summary.edit"))
    await c.press(label("en", "edit.category"))
    await c.press(label("en", "cat.snatch_theft"))
    summary = c.texts()[-1]
    assert "Snatch theft" in summary and "last Saturday night" in summary
    await c.press(label("en", "summary.confirm"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report.category == "snatch_theft" and report.occurred_text == "last Saturday night"


async def test_phone_contact_is_encrypted(session_factory):
    c = citizen(session_factory, 1001)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.other"))
    await c.say(label("vi", "place.dont_know"))
    await c.press(label("vi", "when.unknown"))
    await c.say("Có người lạ hay tụ tập ban đêm")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.phone", mark=""))
    await c.contact("+84901234567", own=False)
    assert label("vi", "contact.not_own") in c.texts()
    await c.contact("+84901234567")
    assert c.last_reply().text.startswith(
        label(
            "vi",
            "summary.text",
            category="x",
            place="x",
            when="x",
            description="x",
            evidence="x",
            contact="x",
        )[:10]
    )
    await c.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        route = await session.scalar(select(ContactRoute))
        report = await session.scalar(select(Report))
        assert report.contact_mode == "phone"
        assert route.phone is not None and "0901234567" not in route.phone


async def test_shared_location_is_kept(session_factory):
    c = citizen(session_factory, 1002)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    await c.location(10.3759, 105.4185)
    await c.press(label("vi", "when.now"))
    await c.say("Trộm đang cạy cửa nhà số 5")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.none", mark=""))
    await c.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert (report.latitude, report.longitude) == (10.3759, 105.4185)


async def test_non_image_evidence_is_downloaded_cleaned_and_stored(session_factory):
    c = citizen(session_factory, 1003)
    voice = b"OggS\x00\x02" + bytes(20)
    c.files = FileStore({"VID1": make_mp4(), "VOICE1": voice})
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.cyber_fraud"))
    await c.say(label("vi", "place.dont_know"))
    await c.press(label("vi", "when.today"))
    await c.say("Bị lừa chuyển khoản qua mạng xã hội")
    await c.attach(Attachment("video", "VID1", 1000, "video/mp4"), caption="đoạn video")
    assert c.texts()[0].startswith(label("vi", "ev.received", count=1))
    await c.attach(Attachment("voice", "VOICE1", 2000, "audio/ogg"))
    assert c.texts()[0].startswith(label("vi", "ev.received", count=2))
    await c.attach(Attachment("document", "BIG", 21 * 1024 * 1024, "application/pdf"))
    assert c.texts()[0].startswith(label("vi", "ev.too_large", limit_mb=20)[:10])
    await c.press(label("vi", "ev.done"))
    await c.press(label("vi", "contact.none", mark=""))
    await c.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        media = (await session.scalars(select(ReportMedia).order_by(ReportMedia.position))).all()
        # Nothing is kept as the channel's file id: each file is a stored copy.
        assert [(m.kind, m.file_ref, m.mime, m.caption) for m in media] == [
            ("video", None, "video/mp4", "đoạn video"),
            ("voice", None, "audio/ogg", None),
        ]
        assert all(m.blob_id is not None for m in media)
        clip, note = [
            await session.scalar(select(MediaBlob.content).where(MediaBlob.id == m.blob_id))
            for m in media
        ]
    assert clip is not None and note is not None
    assert MP4_LOCATION not in clip and MP4_CREATED not in clip
    assert note == voice  # an Ogg voice note is recognised but passed on as it is
    names = [neutral_name(m.position, m.mime) for m in media]
    assert names == ["evidence-1.mp4", "evidence-2.ogg"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_expired_draft_is_discarded(session_factory):
    from datetime import timedelta

    flow = make_flow(draft_ttl=timedelta(seconds=-1))
    c = citizen(session_factory, 1004, flow=flow)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    assert label("vi", "draft.expired") in c.texts()
