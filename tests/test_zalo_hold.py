"""The citizen delivery's hold for a tipster who cannot be reached, and its per-channel pacing,
on a real database (SQLite and PostgreSQL) with a Zalo-like channel that refuses as told."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.channel import ChannelRegistry, SendError
from bot.delivery import CitizenMessenger
from bot.delivery.citizens import CHANNEL_RATES, HELD
from handlers.channels import ChannelName
from handlers.outbox import Kind
from storage.models import ContactRoute
from storage.types import utcnow
from tests.test_delivery import rows
from tests.test_outbox_channels import KEYRING, TextOnlyChannel, _report_with_route
from tests.test_outbox_channels import session_factory as session_factory

ROUTE = {"channel": "zalo_oa", "chat_id": "8123"}


def messenger(session_factory, channel: TextOnlyChannel, **extra) -> CitizenMessenger:
    registry = ChannelRegistry()
    registry.add(channel)
    return CitizenMessenger(session_factory, registry, KEYRING, per_second=1000, **extra)


async def test_a_window_refusal_holds_the_message_and_tells_the_officers_once(session_factory):
    report_id, _ = await _report_with_route(session_factory, ROUTE)
    oa = TextOnlyChannel(ChannelName.ZALO_OA, fail=SendError("-230", gone=True))
    delivery = messenger(session_factory, oa)
    await delivery.run_once()
    [row] = await rows(session_factory, kind=Kind.CITIZEN_MESSAGE.value)
    assert (row.status, row.last_error) == ("pending", HELD)
    assert row.next_attempt_at > utcnow() + timedelta(days=29)  # held, not retried
    [notice] = await rows(session_factory, kind=Kind.CHAT_TEXT.value)
    assert "Zalo OA" in notice.payload["text"]
    # Due again while the route is still marked: held again without a send, and the officers
    # are not told twice.
    async with session_factory() as session, session.begin():
        row = await session.get(type(row), row.id)
        row.next_attempt_at = utcnow()
    await delivery.run_once()
    assert len(await rows(session_factory, kind=Kind.CHAT_TEXT.value)) == 1
    [row] = await rows(session_factory, kind=Kind.CITIZEN_MESSAGE.value)
    assert row.status == "pending"
    async with session_factory() as session:
        route = await session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report_id)
        )
        assert route is not None and route.blocked_at is not None


async def test_a_message_held_too_long_is_dropped(session_factory):
    await _report_with_route(session_factory, ROUTE)
    oa = TextOnlyChannel(ChannelName.ZALO_OA, fail=SendError("-213", gone=True))
    await messenger(session_factory, oa).run_once()
    later = utcnow() + timedelta(days=31)
    delivery = messenger(session_factory, oa, clock=lambda: later)
    await delivery.run_once()
    [row] = await rows(session_factory, kind=Kind.CITIZEN_MESSAGE.value)
    assert row.status == "failed" and oa.sent == []


async def test_each_zalo_channel_has_its_own_pace(session_factory):
    assert CHANNEL_RATES[ChannelName.ZALO_OA] < CHANNEL_RATES[ChannelName.ZALO_BOT]
    delivery = messenger(
        session_factory, TextOnlyChannel(ChannelName.ZALO_OA), channel_rates={"zalo_oa": 2.0}
    )
    for _ in range(3):
        await delivery._pace("zalo_oa")
    await delivery._pace("telegram")  # unpaced here: no slot kept
    assert set(delivery._next_slot) == {"zalo_oa"}
    first = delivery._next_slot["zalo_oa"]
    await delivery._pace("zalo_oa")
    assert delivery._next_slot["zalo_oa"] - first == pytest.approx(0.5)  # a slot per 0.5 s
