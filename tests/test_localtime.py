"""Every time shown to a person is in the service's zone (Vietnam's), the database stays UTC."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, update

from handlers import localtime
from handlers.cards import report_card
from storage.models import Report
from tests.driver import citizen, label, sync_units

RECEIVED_UTC = datetime(2026, 11, 29, 22, 33, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _vietnam():
    localtime.configure(localtime.DEFAULT_TIMEZONE)
    yield
    localtime.configure(localtime.DEFAULT_TIMEZONE)


def test_formats_in_vietnam_time_the_vietnamese_way():
    assert localtime.format_datetime(RECEIVED_UTC) == "30/11/2026 05:33"
    assert localtime.format_short(RECEIVED_UTC) == "05:33 30/11"
    assert localtime.format_month(datetime(2026, 11, 30, 17, 0, tzinfo=UTC)) == "12/2026"
    # SQLite hands back naive values: they are UTC.
    assert localtime.format_datetime(RECEIVED_UTC.replace(tzinfo=None)) == "30/11/2026 05:33"
    assert localtime.local_midnight(date(2026, 12, 1)) == datetime(2026, 11, 30, 17, tzinfo=UTC)


def test_another_zone_can_be_configured():
    localtime.configure("Europe/Paris")
    assert localtime.format_datetime(RECEIVED_UTC) == "29/11/2026 23:33"
    with pytest.raises(ValueError, match="unknown time zone"):
        localtime.configure("Mars/Olympus_Mons")


async def test_status_and_card_show_the_same_local_time(session_factory):
    await sync_units(session_factory)
    c = citizen(session_factory, 4242, language_code="vi")
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.drugs"))
    await c.say("long xuyen")
    await c.press("Phường Long Xuyên")
    await c.press(label("vi", "when.today"))
    await c.say("Có người bán ma túy ở quán cà phê")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.relay", mark="✓ "))
    await c.press(label("vi", "summary.confirm"))
    text = "\n".join(c.texts())
    code = re.search(r"([2-9A-Z]{5}-[2-9A-Z]{5})", text)
    pin = re.search(r"(?:PIN|Mã PIN): (\d{6})", text)
    assert code and pin, text
    async with session_factory() as session, session.begin():
        await session.execute(update(Report).values(created_at=RECEIVED_UTC))

    await c.command("status", f"{code.group(1)} {pin.group(1)}")
    status = "\n".join(c.texts())
    assert "30/11/2026 05:33" in status, status
    assert "UTC" not in status and "22:33" not in status

    async with session_factory() as session:
        report_id = await session.scalar(select(Report.id))
        assert report_id is not None
        card = await report_card(session, report_id, locale="vi")
        stored = await session.scalar(select(Report.created_at))
    assert "30/11/2026 05:33" in card.text
    assert stored is not None and stored.replace(tzinfo=UTC) == RECEIVED_UTC  # still UTC
