"""The traffic-accident emergency flow: numbers first, at most two questions, no review."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from handlers.events import Attachment
from handlers.intake import PRIORITY_EMERGENCY, TIMER_ESCALATE
from storage.models import Conversation, OutboxMessage, Report, ReportMedia
from tests.driver import citizen, label, make_flow, sync_units
from tests.standin.factory import make_jpeg


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


async def test_numbers_first_then_location(session_factory):
    c = citizen(session_factory, 501)
    await c.command("accident")
    replies = c.last.replies
    assert replies[0].text == label("vi", "acc.numbers")
    for number in ("113", "115", "114", "112"):
        assert number in replies[0].text
    assert replies[1].text == label("vi", "acc.ask_place")
    assert replies[1].keyboard is not None and replies[1].keyboard.request_location


async def test_an_emergency_by_location_goes_out_without_review(session_factory):
    flow = make_flow()
    flow.locator = SquareLocator()
    c = citizen(session_factory, 502, flow=flow)
    await c.command("tainan")
    await c.location(10.38, 105.42)
    assert label("vi", "acc.ask_injured") in c.texts()
    await c.press(label("vi", "acc.inj_2"))
    assert label("vi", "acc.ask_photo") in c.texts()
    await c.press(label("vi", "acc.send_now"))
    assert c.texts()[0].startswith(label("vi", "acc.submitted", code="X", pin="0")[:20])
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report.kind == "emergency" and report.category is None
        assert report.unit_code == "30307"
        assert (report.injured, report.injured_count) == ("yes", 2)
        assert report.contact_mode == "relay"
        rows = {o.kind: o for o in (await session.scalars(select(OutboxMessage))).all()}
        assert rows["report_card"].priority == PRIORITY_EMERGENCY
        assert rows["report_card"].destination == "unit:30307"
        timer = rows[TIMER_ESCALATE]
        delay = timer.next_attempt_at - report.created_at
        assert timedelta(minutes=2, seconds=59) <= delay <= timedelta(minutes=3, seconds=1)


async def test_a_typed_place_that_names_a_commune_routes_there(session_factory):
    c = citizen(session_factory, 503)
    await c.command("accident")
    await c.say("Ngã tư gần chợ Châu Đốc, hai xe máy va chạm")
    await c.press(label("vi", "acc.inj_unknown"))
    await c.press(label("vi", "acc.send_now"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report.place_text == "Ngã tư gần chợ Châu Đốc, hai xe máy va chạm"
        assert report.unit_code is not None
        assert report.injured == "unknown"


async def test_an_unknown_place_goes_to_the_duty_queue(session_factory):
    c = citizen(session_factory, 504, language_code="en")
    await c.command("accident")
    await c.location(21.03, 105.80)  # Hà Nội: outside every configured area
    await c.press(label("en", "acc.inj_none"))
    await c.press(label("en", "acc.send_now"))
    async with session_factory() as session:
        card = await session.scalar(
            select(OutboxMessage).where(OutboxMessage.kind == "report_card")
        )
        assert card.destination == "duty"


async def test_a_photo_is_cleaned_and_submits(session_factory):
    c = citizen(session_factory, 505)
    photo = make_jpeg(32, 24, gps=(10.7, 105.1), make="SecretCam")
    c.files.files["PH1"] = photo
    await c.command("accident")
    await c.say("Cầu Cồn Tiên")
    await c.press(label("vi", "acc.inj_1"))
    await c.attach(Attachment("photo", "PH1", len(photo), "image/jpeg"))
    assert c.texts()[0].startswith(label("vi", "acc.submitted", code="X", pin="0")[:20])
    async with session_factory() as session:
        media = await session.scalar(select(ReportMedia))
        assert media is not None and media.kind == "photo" and media.blob_id is not None


async def test_an_unfinished_tip_survives_an_emergency(session_factory):
    c = citizen(session_factory, 506)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.drugs"))
    await c.command("accident")
    await c.say("Quốc lộ 91, gần cầu")
    await c.press(label("vi", "acc.inj_none"))
    await c.press(label("vi", "acc.send_now"))
    assert label("vi", "menu.continue") in [b.label for b in c.buttons()]
    await c.press(label("vi", "menu.continue"))
    assert label("vi", "place.ask") in c.texts()
    async with session_factory() as session:
        conversation = await session.scalar(select(Conversation))
        assert conversation.data["draft"]["category"] == "drugs"


async def test_cancel_from_the_location_keyboard(session_factory):
    c = citizen(session_factory, 507)
    await c.command("accident")
    await c.say(label("vi", "common.cancel"))
    assert c.texts()[0] == label("vi", "acc.cancelled")
    async with session_factory() as session:
        assert (await session.scalar(select(Report))) is None


async def test_deep_link_preselects_the_unit(session_factory):
    c = citizen(session_factory, 508)
    await c.command("start", "u_30307")
    assert label("vi", "greet.preset_unit", unit="Phường Long Xuyên") in c.texts()
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.theft"))
    assert label("vi", "place.preset", name="Phường Long Xuyên") in c.texts()
    await c.press(label("vi", "place.keep"))
    await c.press(label("vi", "when.now"))
    await c.say("Trộm đang lấy xe trước nhà văn hóa")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.none", mark=""))
    await c.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        report = await session.scalar(select(Report))
        assert report.unit_code == "30307"


async def test_a_forged_deep_link_is_ignored(session_factory):
    c = citizen(session_factory, 509)
    await c.command("start", "u_99999")
    await c.command("start", "u_' OR 1=1")
    assert not any("99999" in text for text in c.texts())
