"""A direct answer the channel still refuses after bot/answers.py's retries is never dropped: it
waits in the outbox, addressed by the keyed sender hash with its route encrypted, and reaches
the citizen in order with their later answers. Telegram, the Zalo bot and the Zalo OA, each
through its HTTP stand-in, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bot import answers
from handlers.i18n import t
from handlers.outbox import Kind
from storage.models import Conversation, OutboxMessage
from tests.e2e import Chat
from tests.standin.factory import UpdateFactory
from tests.test_zalo_flows import (  # noqa: F401 - the fixtures
    BotCitizen,
    OACitizen,
    service,
    telegram,
    until,
    zalo_bot,
    zalo_oa,
)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """bot/answers.py's waits between tries (0.5, 1, 2, 4 s) shortened; the tries are as many."""
    monkeypatch.setattr(answers, "BACKOFF", 0.01)


async def queued(running) -> list[OutboxMessage]:
    async with running.session_factory() as session:
        found = await session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.kind == Kind.CITIZEN_ANSWER.value)
            .order_by(OutboxMessage.id)
        )
        return list(found.all())


def to_user(standin, user_id: int) -> list:
    return [c for c in standin.calls if c.method == "sendMessage" and c.chat_id == user_id]


async def test_a_telegram_answer_refused_after_the_retries_arrives_from_the_outbox(
    service,  # noqa: F811
    telegram,  # noqa: F811
):
    factory = UpdateFactory(telegram)
    user = factory.vi_user
    telegram.fail_next("sendMessage", 502, count=answers.ATTEMPTS, chat_id=user.id)
    await Chat(telegram, factory, service, user).command("start")
    await telegram.wait_for(
        lambda c: c.method == "sendMessage" and c.chat_id == user.id and c.ok, timeout=10
    )
    calls = to_user(telegram, user.id)
    assert [c.ok for c in calls] == [False] * answers.ATTEMPTS + [True]
    assert calls[-1].text.startswith(t("vi", "greet.intro"))
    assert "inline_keyboard" in calls[-1].params["reply_markup"]  # the menu's buttons too
    [row] = await queued(service)
    await until(lambda: _sent(service, row.id))
    # No chat id at rest: the keyed sender hash, and the route encrypted.
    key = service.keyring.sender_key("telegram", str(user.id))
    assert row.destination == f"answer:{key}" and row.report_id is None
    assert str(user.id) not in json.dumps(row.payload)
    route = service.keyring.decrypt(row.payload["route"])
    assert route == {"channel": "telegram", "chat_id": str(user.id)}


async def _sent(running, row_id: int) -> bool:
    async with running.session_factory() as session:
        row = await session.get(OutboxMessage, row_id)
        return row is not None and row.status == "sent"


async def test_a_later_answer_waits_behind_an_earlier_one(service, telegram):  # noqa: F811
    factory = UpdateFactory(telegram)
    user = factory.vi_user
    service.messenger.retry_cap = 0.4
    service.messenger.poll_interval = 0.1  # a released row is looked at again soon
    # Telegram keeps refusing the chat a while: the inline tries, then the outbox's first two.
    telegram.fail_next("sendMessage", 502, count=answers.ATTEMPTS + 2, chat_id=user.id)
    chat = Chat(telegram, factory, service, user)
    await chat.command("start")
    await chat.command("help")  # answered while the greeting still waits
    rows = await queued(service)
    assert len(rows) == 2 and rows[0].destination == rows[1].destination
    await until(lambda: _sent(service, rows[1].id))
    delivered = [c.text or "" for c in to_user(telegram, user.id) if c.ok]
    assert len(delivered) == 2
    assert delivered[0].startswith(t("vi", "greet.intro"))
    assert t("vi", "help.text")[:40] in delivered[1]
    # Once none wait, answers go directly again and the conversation's mark is gone.
    await chat.command("start")
    assert len(await queued(service)) == 2
    async with service.session_factory() as session:
        conversation = await session.get(
            Conversation, service.keyring.sender_key("telegram", str(user.id))
        )
    assert conversation is not None and "queued" not in (conversation.data or {})


async def test_a_zalo_bot_answer_refused_after_the_retries_arrives_from_the_outbox(
    service,  # noqa: F811
    zalo_bot,  # noqa: F811
):
    citizen = BotCitizen(service, zalo_bot, "zb-queued-1")
    zalo_bot.fail_next("sendMessage", count=answers.ATTEMPTS)
    assert await citizen.say("xin chào") == ""  # nothing reached them while it was handled
    await until(lambda: _any_sent(service))
    [menu] = citizen.received()
    assert "1. " in menu
    failed = [c for c in zalo_bot.calls if c.method == "sendMessage" and not c.answer.get("ok")]
    assert len(failed) == answers.ATTEMPTS
    [row] = await queued(service)
    assert "zb-queued-1" not in json.dumps(row.payload) + row.destination


async def test_a_zalo_oa_answer_refused_after_the_retries_arrives_from_the_outbox(
    service,  # noqa: F811
    zalo_oa,  # noqa: F811
):
    citizen = OACitizen(service, zalo_oa, "oa-queued-1")
    zalo_oa.failing_sends = answers.ATTEMPTS
    assert await citizen.say("xin chào") == ""
    await until(lambda: _any_sent(service))
    [menu] = citizen.received()
    assert "1. " in menu and zalo_oa.failed_sends == answers.ATTEMPTS
    [row] = await queued(service)
    assert "oa-queued-1" not in json.dumps(row.payload) + row.destination


async def _any_sent(running) -> bool:
    return any(row.status == "sent" for row in await queued(running))
