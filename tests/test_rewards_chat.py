"""The reward workflow in chat: propose on the card, decide in the rewards chat, pay out."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from bot.dispatch import Dispatcher
from handlers.i18n import t
from handlers.officers import Registry
from handlers.security import Keyring
from handlers.triage import Triage
from storage.models import CardPost, Report, Reward
from tests.driver import TEST_KEY, citizen, make_flow, sync_units
from tests.test_triage import ADMIN, COMMANDER, LX_CHAT, OFFICER, QUEUES, World, _messages

REWARDS_CHAT = -1001000000077
SECOND_COMMANDER = 8


@pytest.fixture
async def world(session_factory):
    await sync_units(session_factory)
    async with session_factory() as session, session.begin():
        registry = Registry(session)
        await registry.ensure_admins([ADMIN])
        await registry.enrol(
            telegram_user_id=OFFICER,
            display_name="Cán bộ A",
            role="officer",
            queue_key="lx",
            by=None,
        )
        await registry.enrol(
            telegram_user_id=COMMANDER,
            display_name="Chỉ huy D",
            role="commander",
            queue_key="lx",
            by=None,
        )
        await registry.enrol(
            telegram_user_id=SECOND_COMMANDER,
            display_name="Chỉ huy E",
            role="commander",
            queue_key="*",
            by=None,
        )
    triage = Triage(queues=QUEUES, keyring=Keyring(TEST_KEY), rewards_chat=(REWARDS_CHAT, None))
    return World(session_factory, Dispatcher(session_factory, make_flow(), triage))


async def resolved_tip(world, user_id, contact="relay"):
    report, card = await world.tip(user_id, contact=contact)
    async with world.session_factory() as session, session.begin():
        stored = await session.get(Report, report.id)
        stored.status, stored.outcome = "resolved", "clarified"
    return report, card


async def posted(world, chat_id, report_id) -> int:
    """Record that the worker posted the latest chat_text (as it does) and return its id."""
    message_id = next(_messages)
    async with world.session_factory() as session, session.begin():
        session.add(
            CardPost(report_id=report_id, chat_id=chat_id, message_id=message_id, kind="note")
        )
    return message_id


async def propose_and_approve(world, report, card, approver=SECOND_COMMANDER):
    await world.press(OFFICER, f"r:rwd:{report.id}", card)
    await world.say(OFFICER, "2.000.000 Thông tin giúp bắt quả tang")
    post = (await world.outbox("chat_text"))[-2]
    assert post.destination == f"chat:{REWARDS_CHAT}"
    approve = post.payload["buttons"][0][0]["data"]
    message_id = await posted(world, REWARDS_CHAT, report.id)
    outcome = await world.press(approver, approve, message_id, chat_id=REWARDS_CHAT)
    return outcome, approve, message_id


async def test_propose_approve_notify_and_pay(world):
    report, card = await resolved_tip(world, 9101)
    outcome, _, _ = await propose_and_approve(world, report, card)
    assert outcome.notice == t("vi", "triage.prompt.sent")
    await world.say(SECOND_COMMANDER, "Đúng quy định khen thưởng", chat_id=REWARDS_CHAT)
    async with world.session_factory() as session:
        reward = await session.scalar(select(Reward))
        assert reward.status == "approved" and reward.claim_hash
    note = [
        o
        for o in await world.outbox("citizen_message")
        if o.payload.get("key") == "reward.citizen.approved"
    ]
    assert len(note) == 1
    claim = Keyring(TEST_KEY).decrypt(note[0].payload["secret"])["claim"]
    assert claim not in str(note[0].payload)
    await world.say(
        OFFICER,
        f"/payout {claim} PC-0001",
        command="payout",
        args=f"{claim} PC-0001",
        reply_to_bot=False,
    )
    async with world.session_factory() as session:
        reward = await session.scalar(select(Reward))
        assert reward.status == "paid" and reward.payout_reference == "PC-0001"
        assert reward.claim_hash is None
    await world.say(
        OFFICER,
        f"/payout {claim} PC-0002",
        command="payout",
        args=f"{claim} PC-0002",
        reply_to_bot=False,
    )
    assert (await world.outbox("chat_text"))[-1].payload["text"] == t("vi", "reward.wrong_code")


async def test_four_eyes_in_chat(world):
    report, card = await resolved_tip(world, 9102)
    await world.press(COMMANDER, f"r:rwd:{report.id}", card)
    await world.say(COMMANDER, "1000000 Tin chính xác")
    post = (await world.outbox("chat_text"))[-2]
    message_id = await posted(world, REWARDS_CHAT, report.id)
    outcome = await world.press(
        COMMANDER, post.payload["buttons"][0][0]["data"], message_id, chat_id=REWARDS_CHAT
    )
    assert outcome.alert and outcome.notice == t("vi", "reward.four_eyes")
    # A plain officer may not decide; the press outside the rewards chat is refused too.
    outcome = await world.press(
        OFFICER, post.payload["buttons"][0][0]["data"], message_id, chat_id=REWARDS_CHAT
    )
    assert outcome.alert
    outcome = await world.press(
        SECOND_COMMANDER, post.payload["buttons"][0][0]["data"], card, chat_id=LX_CHAT
    )
    assert outcome.notice == t("vi", "reward.not_reward_chat")


async def test_amount_over_the_cap_is_refused_clearly(world):
    report, card = await resolved_tip(world, 9103)
    await world.press(OFFICER, f"r:rwd:{report.id}", card)
    await world.say(OFFICER, "99.000.000 quá nhiều")
    assert (
        (await world.outbox("chat_text"))[-1]
        .payload["text"]
        .startswith(t("vi", "reward.bad_amount", cap="X")[:20])
    )
    async with world.session_factory() as session:
        assert await session.scalar(select(Reward)) is None


@pytest.mark.parametrize("mode", ["relay", "phone", "none"])
async def test_the_tipster_is_told_as_their_contact_mode_allows(world, mode):
    report, card = await resolved_tip(
        world, 9200 + len(mode), contact="relay" if mode == "phone" else mode
    )
    if mode == "phone":
        async with world.session_factory() as session, session.begin():
            (await session.get(Report, report.id)).contact_mode = "phone"
    await propose_and_approve(world, report, card)
    await world.say(SECOND_COMMANDER, "Đồng ý", chat_id=REWARDS_CHAT)
    notes = [
        o
        for o in await world.outbox("citizen_message")
        if o.payload.get("key") == "reward.citizen.approved"
    ]
    assert len(notes) == (0 if mode == "none" else 1)


async def test_the_status_check_shows_the_reward(world):
    report, card = await resolved_tip(world, 9301, contact="none")
    found = re.search(r"PIN: (\d{6})", world.citizen.outcomes[-1].replies[0].text)
    assert found is not None
    pin = found.group(1)
    await propose_and_approve(world, report, card)
    await world.say(SECOND_COMMANDER, "Đồng ý", chat_id=REWARDS_CHAT)
    c = citizen(world.session_factory, 9302, flow=world.dispatcher.flow)
    await c.command("status", f"{report.code} {pin}")
    text = "\n".join(c.texts())
    assert "2.000.000 ₫" in text
    shown = re.search(r"([2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4})", text)
    assert shown is not None
    claim = shown.group(1)
    await world.say(
        OFFICER,
        f"/payout {claim} PC-9",
        command="payout",
        args=f"{claim} PC-9",
        reply_to_bot=False,
    )
    async with world.session_factory() as session:
        assert (await session.scalar(select(Reward))).status == "paid"
    await c.command("status", f"{report.code} {pin}")
    assert any(t("vi", "reward.citizen.paid", amount="2.000.000 ₫") in x for x in c.texts())
