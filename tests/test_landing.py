"""A send to officers that timed out on the client, or whose connection was lost after the
request went out, while Telegram did create the message, is never posted twice
(bot/delivery/landing.py), on SQLite and PostgreSQL.

The stand-in carries the call out at once and holds its answer back past the client's read
timeout (``delay_response``): exactly what happens when Telegram's answer is lost. Real
python-telegram-bot over real HTTP, the production request backend with a short read timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select
from telegram import Bot

from bot.delivery import DeliveryWorker
from bot.http import AiohttpRequest
from storage.models import CardPost, ChatMark
from tests.driver import sync_units
from tests.standin import DEFAULT_TOKEN, BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory
from tests.test_delivery import FAST, QUEUES, UNIT_CHAT, code_counts, rows, seed, wait_until

#: The client gives up after this long; the stand-in answers after HELD.
READ_TIMEOUT = 0.3
HELD = 1.0


@pytest.fixture
async def session_factory(session_factory):
    await sync_units(session_factory)
    return session_factory


async def make_worker(
    session_factory, standin: BotAPIStandIn, *, read_timeout: float = READ_TIMEOUT, **options: Any
) -> DeliveryWorker:
    options.setdefault("limits", FAST)
    options.setdefault("retry_base", 0.05)
    options.setdefault("retry_cap", 0.2)
    options.setdefault("settle_seconds", 0.05)
    bot = Bot(
        DEFAULT_TOKEN,
        base_url=standin.base_url,
        base_file_url=standin.base_file_url,
        request=AiohttpRequest(read_timeout=read_timeout),
    )
    await bot.initialize()
    return DeliveryWorker(session_factory, bot, QUEUES, **options)


def cards_in_chat(standin: BotAPIStandIn, code: str) -> list[dict[str, Any]]:
    """The messages the group shows now that carry ``code`` (after edits and deletes)."""
    return [m for m in standin.messages(UNIT_CHAT) if code in (m.get("text") or "")]


async def settle(worker: DeliveryWorker, rounds: int = 20) -> None:
    """Run passes until the outbox has nothing due (released rows come back after a moment)."""
    for _ in range(rounds):
        await worker.run_once()
        await asyncio.sleep(0.06)


async def test_a_card_that_landed_although_its_send_timed_out_is_adopted(session_factory):
    [(_, first)] = await seed(session_factory, 1, location=True)
    async with BotAPIStandIn() as standin:
        worker = await make_worker(session_factory, standin)
        await worker.run_once()  # the chat's mark: what the bot knows it posted there
        # An officer writes in the group meanwhile: the probe passes over their message.
        factory = UpdateFactory(standin)
        officer = factory.new_user()
        standin.push_update(factory.group_text(officer, "ok", group=Group(UNIT_CHAT)))
        [(report_id, code)] = await seed(session_factory, 1, location=True)
        standin.delay_response("sendMessage", HELD, chat_id=UNIT_CHAT)
        await worker.run_once()
        # The card was created, its answer never came: the row waits, in doubt.
        assert len(cards_in_chat(standin, code)) == 1
        [row] = await rows(session_factory, report_id=report_id)
        assert row.status == "pending" and "unsure" in row.payload
        await settle(worker)
        await worker.bot.shutdown()
        [row] = await rows(session_factory, report_id=report_id)
        async with session_factory() as session:
            post = await session.scalar(select(CardPost).where(CardPost.report_id == report_id))
            mark = await session.get(ChatMark, UNIT_CHAT)
        probes = [c for c in standin.calls_for("editMessageReplyMarkup") if c.chat_id == UNIT_CHAT]
    [card] = cards_in_chat(standin, code)
    assert (
        code_counts(standin, UNIT_CHAT)[code] == 1 and code_counts(standin, UNIT_CHAT)[first] == 1
    )
    assert row.status == "sent" and "unsure" not in row.payload
    assert worker.stats.adopted == 1 and worker.stats.resent == 0
    # The officer's message could not be edited; the card answered "not modified" and stays
    # as it was, keyboard and all; the map pin then went as a reply to it.
    assert [c.description for c in probes] == [
        "Bad Request: message can't be edited",
        "Bad Request: message is not modified: specified new message content and reply markup "
        "are exactly the same as a content and reply markup of the current message",
    ]
    assert post is not None and post.message_id == card["message_id"]
    assert card.get("reply_markup") and f"{report_id}" in str(card["reply_markup"])
    [pin] = [c for c in standin.calls_for("sendLocation") if c.ok and c.chat_id == UNIT_CHAT][1:]
    assert pin.params["reply_parameters"]["message_id"] == card["message_id"]
    assert mark is not None and mark.unsure_row_id is None
    assert mark.last_message_id == pin.result["message_id"]


async def test_a_card_whose_timed_out_send_did_not_land_is_sent_again_once(session_factory):
    await seed(session_factory, 1)
    async with BotAPIStandIn() as standin:
        worker = await make_worker(session_factory, standin)
        await worker.run_once()
        [(report_id, code)] = await seed(session_factory, 1)
        # Refused, and the refusal too late for the client: nothing was created.
        standin.fail_next("sendMessage", 500, chat_id=UNIT_CHAT)
        standin.delay_response("sendMessage", HELD, chat_id=UNIT_CHAT)
        await worker.run_once()
        assert cards_in_chat(standin, code) == []
        await settle(worker)
        await worker.bot.shutdown()
    [row] = await rows(session_factory, report_id=report_id)
    assert row.status == "sent"
    assert len(cards_in_chat(standin, code)) == 1 and code_counts(standin, UNIT_CHAT)[code] == 1
    assert worker.stats.resent == 1 and worker.stats.adopted == 0


async def test_a_card_whose_connection_was_lost_after_it_landed_is_adopted(session_factory):
    """A connection reset after the request went out (not a time-out) is a send in doubt too:
    probed for and adopted, never posted again."""
    await seed(session_factory, 1)
    async with BotAPIStandIn() as standin:
        worker = await make_worker(session_factory, standin)
        await worker.run_once()
        [(report_id, code)] = await seed(session_factory, 1)
        standin.drop_connection("sendMessage", chat_id=UNIT_CHAT)
        await worker.run_once()
        assert standin.stats.dropped_connections == 1
        assert len(cards_in_chat(standin, code)) == 1
        [row] = await rows(session_factory, report_id=report_id)
        assert row.status == "pending" and "unsure" in row.payload
        await settle(worker)
        await worker.bot.shutdown()
    [row] = await rows(session_factory, report_id=report_id)
    assert row.status == "sent" and "unsure" not in row.payload
    assert len(cards_in_chat(standin, code)) == 1 and code_counts(standin, UNIT_CHAT)[code] == 1
    assert worker.stats.adopted == 1 and worker.stats.resent == 0


async def test_a_refused_connection_is_sent_again_without_a_probe() -> None:
    """Nothing was sent when no connection could be opened: a plain NetworkError, not a send
    in doubt."""
    import aiohttp
    from telegram.error import NetworkError

    from bot.answers import maybe_delivered
    from bot.http import ConnectionLost

    request = AiohttpRequest(read_timeout=READ_TIMEOUT)
    await request.initialize()
    try:
        with pytest.raises(NetworkError) as raised:  # the discard port: nothing listens
            await request.post(f"http://127.0.0.1:9/bot{DEFAULT_TOKEN}/sendMessage")
    finally:
        await request.shutdown()
    assert isinstance(raised.value.__cause__, aiohttp.ClientConnectorError)
    assert not isinstance(raised.value, ConnectionLost)
    assert not maybe_delivered(raised.value)


async def test_a_row_in_doubt_holds_its_chat_and_goes_first(session_factory):
    await seed(session_factory, 1)
    async with BotAPIStandIn() as standin:
        worker = await make_worker(session_factory, standin, settle_seconds=0.5)
        await worker.run_once()
        [(_, doubtful)] = await seed(session_factory, 1)
        standin.delay_response("sendMessage", HELD, chat_id=UNIT_CHAT)
        await worker.run_once()
        # Emergencies come in while it is in doubt: none is posted before it is resolved (a
        # bot message above the mark can only be the one in doubt).
        later = await seed(session_factory, 2, kind="emergency")
        await worker.run_once()
        assert [
            m for m in standin.messages(UNIT_CHAT) if any(c in m.get("text", "") for _, c in later)
        ] == []
        await settle(worker, rounds=30)
        await worker.bot.shutdown()
    texts = [m.get("text", "") for m in standin.messages(UNIT_CHAT)]
    order = [i for i, text in enumerate(texts) if doubtful in text]
    after = [i for i, text in enumerate(texts) for _, c in later if c in text]
    assert len(order) == 1 and len(after) == 2 and order[0] < min(after)
    assert code_counts(standin, UNIT_CHAT)[doubtful] == 1


async def test_a_row_taken_over_from_a_worker_stuck_mid_send_is_not_sent_twice(
    session_factory, db_url
):
    await seed(session_factory, 1)
    async with BotAPIStandIn() as standin:
        first = await make_worker(session_factory, standin)
        await first.run_once()
        await first.bot.shutdown()
        [(report_id, code)] = await seed(session_factory, 1, location=True)
        # The first worker waits long for its answer (as if it hung or died); its lease lapses.
        stuck = await make_worker(session_factory, standin, read_timeout=5, lease_seconds=0.2)
        standin.delay_response("sendMessage", 1.5, chat_id=UNIT_CHAT)
        hung = asyncio.create_task(stuck.run_once())
        await wait_until(lambda: bool(cards_in_chat(standin, code)), 5)
        await asyncio.sleep(0.3)
        other = await make_worker(session_factory, standin)
        await settle(other, rounds=10)
        await hung  # its answer finally came: the row is no longer its own
        await settle(other, rounds=5)
        await other.bot.shutdown()
        await stuck.bot.shutdown()
    [row] = await rows(session_factory, report_id=report_id)
    assert row.status == "sent"
    assert len(cards_in_chat(standin, code)) == 1 and code_counts(standin, UNIT_CHAT)[code] == 1
    assert other.stats.adopted == 1
    pins = [c for c in standin.calls_for("sendLocation") if c.ok and c.chat_id == UNIT_CHAT]
    assert len(pins) == 1
