"""Officers' triage in the queue chat: who may act, every action, the relay, commands.

These tests drive the triage use case and the citizen flow through the real dispatcher and
database; ``test_triage_telegram.py`` goes end to end through python-telegram-bot.
"""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select

from bot.dispatch import Dispatcher
from config.queues import Queue, QueueMap, duty_queue
from handlers.i18n import t
from handlers.officers import Registry
from handlers.security import format_code
from handlers.triage import OfficerMessage, OfficerPress, Triage
from storage.models import (
    CardPost,
    ContactRoute,
    Conversation,
    OutboxMessage,
    RelayMessage,
    Report,
    ReportEvent,
)
from tests.driver import citizen, label, make_flow, sync_units

LX_CHAT = -1001000000001
CD_CHAT = -1001000000002
DUTY_CHAT = -1001000000099
QUEUES = QueueMap(
    queues=(
        Queue("lx", "Cụm Long Xuyên", LX_CHAT, None, frozenset({"30307", "30292"})),
        Queue("cd", "Cụm Châu Đốc", CD_CHAT, None, frozenset({"30316"})),
    ),
    duty=duty_queue(DUTY_CHAT),
)
ADMIN, OFFICER, OTHER_UNIT, REVOKED, COMMANDER, STRANGER = 1, 2, 3, 4, 5, 6
_ids = itertools.count(50_000)
_messages = itertools.count(1000)


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
            telegram_user_id=OTHER_UNIT,
            display_name="Cán bộ B",
            role="officer",
            queue_key="cd",
            by=None,
        )
        revoked = await registry.enrol(
            telegram_user_id=REVOKED,
            display_name="Cán bộ C",
            role="officer",
            queue_key="lx",
            by=None,
        )
        await registry.revoke(revoked)
        await registry.enrol(
            telegram_user_id=COMMANDER,
            display_name="Chỉ huy D",
            role="commander",
            queue_key="lx",
            by=None,
        )
    dispatcher = Dispatcher(session_factory, make_flow(), Triage(queues=QUEUES))
    return World(session_factory, dispatcher)


class World:
    def __init__(self, session_factory, dispatcher):
        self.session_factory = session_factory
        self.dispatcher = dispatcher

    async def tip(
        self,
        user_id: int,
        *,
        contact: str = "relay",
        place: str = "long xuyen",
        pick: str = "Phường Long Xuyên",
    ) -> tuple[Report, int]:
        """File a tip as a citizen; post its card in its queue chat; return it and the card."""
        c = citizen(self.session_factory, user_id, flow=self.dispatcher.flow)
        c.dispatcher = self.dispatcher
        await c.command("start")
        await c.press(label("vi", "menu.tip"))
        await c.press(label("vi", "cat.drugs"))
        await c.say(place)
        await c.press(pick)
        await c.press(label("vi", "when.today"))
        await c.say("Có người bán ma túy ở quán nước đầu hẻm")
        await c.press(label("vi", "ev.skip"))
        mark = "✓ " if contact == "relay" else ""
        await c.press(label("vi", f"contact.{contact}", mark=mark))
        await c.press(label("vi", "summary.confirm"))
        self.citizen = c
        async with self.session_factory() as session, session.begin():
            report = (await session.scalars(select(Report).order_by(Report.id.desc()))).first()
            assert report is not None
            queue = QUEUES.resolve(report.unit_code)
            assert queue is not None
            message_id = next(_messages)
            session.add(
                CardPost(report_id=report.id, chat_id=queue.chat_id, message_id=message_id)
            )
        return report, message_id

    async def press(self, user_id: int, data: str, message_id: int, chat_id: int = LX_CHAT):
        return await self.dispatcher.process_officer(
            OfficerPress(
                next(_ids), "telegram", chat_id, None, message_id, user_id, f"User {user_id}", data
            )
        )

    async def say(
        self,
        user_id: int,
        text: str,
        *,
        chat_id: int = LX_CHAT,
        command=None,
        args: str = "",
        reply_to_bot: bool = True,
        reply_to_message_id=None,
    ):
        return await self.dispatcher.process_officer_message(
            OfficerMessage(
                next(_ids),
                "telegram",
                chat_id,
                None,
                next(_messages),
                user_id,
                f"User {user_id}",
                text=text,
                command=command,
                args=args,
                reply_to_message_id=reply_to_message_id,
                reply_to_is_bot=reply_to_bot,
            )
        )

    async def report(self, report_id: int) -> Report:
        async with self.session_factory() as session:
            report = await session.get(Report, report_id)
            assert report is not None
            return report

    async def outbox(self, kind: str) -> list[OutboxMessage]:
        async with self.session_factory() as session:
            return list(
                (
                    await session.scalars(
                        select(OutboxMessage)
                        .where(OutboxMessage.kind == kind)
                        .order_by(OutboxMessage.id)
                    )
                ).all()
            )


def denied(outcome) -> bool:
    return (
        outcome is not None and outcome.alert and outcome.notice == t("vi", "triage.not_permitted")
    )


ACTIONS = ["claim", "prog", "ask", "xfer", "res", "rej", "dup"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    ("user", "allowed"),
    [
        (STRANGER, False),
        (OTHER_UNIT, False),
        (REVOKED, False),
        (OFFICER, True),
        (COMMANDER, True),
        (ADMIN, True),
    ],
    ids=["unregistered", "other-unit", "revoked", "officer", "commander", "admin"],
)
async def test_authorization_matrix(world, action, user, allowed):
    report, card = await world.tip(7001)
    before = (await world.report(report.id)).status
    outcome = await world.press(user, f"r:{action}:{report.id}", card)
    after = await world.report(report.id)
    if allowed:
        assert not denied(outcome)
    else:
        assert denied(outcome)
        assert after.status == before and after.assigned_officer_id is None
        async with world.session_factory() as session:
            actions = (
                await session.scalars(
                    select(ReportEvent.action).where(ReportEvent.report_id == report.id)
                )
            ).all()
        assert list(actions) == ["submitted"]


async def test_full_triage_path_with_the_relay(world):
    report, card = await world.tip(7002)
    outcome = await world.press(OFFICER, f"r:claim:{report.id}", card)
    assert outcome.notice == t("vi", "triage.claimed")
    claimed = await world.report(report.id)
    assert claimed.status == "assigned" and claimed.assigned_officer_id is not None
    assert [o.payload["key"] for o in await world.outbox("citizen_message")] == ["notify.assigned"]

    # Ask: the officer is prompted, and answers by replying to the bot.
    outcome = await world.press(OFFICER, f"r:ask:{report.id}", card)
    assert outcome.notice == t("vi", "triage.prompt.sent")
    prompts = await world.outbox("chat_text")
    assert prompts[-1].payload["force_reply"] is True
    await world.say(OFFICER, "Quán nước đó tên là gì, mở cửa giờ nào?")
    asked = await world.report(report.id)
    assert asked.status == "needs_info"
    questions = await world.outbox("citizen_message")
    relay_id = questions[-1].payload["relay_id"]
    async with world.session_factory() as session:
        relay = await session.get(RelayMessage, relay_id)
        assert relay.direction == "to_citizen" and relay.text.startswith("Quán nước")

    # The tipster answers through the "Reply" button under the question.
    c = world.citizen
    await c.press_data(f"0:rel:{report.id}")
    await c.say("Quán Cô Ba, mở từ 6 giờ sáng")
    assert c.texts()[0].startswith(t("vi", "relay.sent", code="X")[:10])
    answered = await world.report(report.id)
    assert answered.status == "in_progress"
    back = await world.outbox("relay_to_officers")
    async with world.session_factory() as session:
        reply = await session.get(RelayMessage, back[-1].payload["relay_id"])
        assert reply.direction == "to_officers" and reply.text == "Quán Cô Ba, mở từ 6 giờ sáng"

    # Resolve: outcome picker, count, arrest with citizens' help.
    await world.press(OFFICER, f"r:res:{report.id}", card)
    await world.press(OFFICER, f"r:out:{report.id}:clarified", card)
    await world.say(OFFICER, "3")
    arrest = (await world.outbox("chat_text"))[-1]
    yes = arrest.payload["buttons"][0][0]["data"]
    async with world.session_factory() as session, session.begin():
        note = next(_messages)
        session.add(CardPost(report_id=report.id, chat_id=LX_CHAT, message_id=note, kind="note"))
    outcome = await world.press(OFFICER, yes, note)
    assert outcome.notice == t("vi", "triage.resolved")
    resolved = await world.report(report.id)
    assert (resolved.status, resolved.outcome) == ("resolved", "clarified")
    assert resolved.subjects_handled == 3 and resolved.citizen_assisted_arrest is True
    async with world.session_factory() as session:
        events = (
            await session.scalars(
                select(ReportEvent)
                .where(ReportEvent.report_id == report.id)
                .order_by(ReportEvent.id)
            )
        ).all()
    assert [e.action for e in events] == ["submitted", "claimed", "asked", "answered", "resolved"]
    assert [(e.from_status, e.to_status) for e in events][-1] == ("in_progress", "resolved")
    assert all(
        e.actor_kind == "officer" and e.actor_id
        for e in events
        if e.action != "submitted" and e.action != "answered"
    )
    # The tipster is told the outcome in a citizen-facing phrase.
    assert (await world.outbox("citizen_message"))[-1].payload[
        "key"
    ] == "outcome.citizen.clarified"
    # Nothing is possible after closing.
    outcome = await world.press(OFFICER, f"r:claim:{report.id}", card)
    assert outcome.notice == t("vi", "triage.closed")


async def test_double_press_and_forged_data(world):
    report, card = await world.tip(7003)
    other, _ = await world.tip(7004)
    first = await world.press(OFFICER, f"r:claim:{report.id}", card)
    second = await world.press(COMMANDER, f"r:claim:{report.id}", card)
    assert first.notice == t("vi", "triage.claimed")
    assert second.alert and second.notice == t("vi", "triage.already_claimed", name="Cán bộ A")
    # The other report's id on this card: refused, nothing changes.
    forged = await world.press(OFFICER, f"r:claim:{other.id}", card)
    assert forged.notice == t("vi", "triage.not_here")
    assert (await world.report(other.id)).status == "new"
    for data in (
        "r:claim",
        "r::1",
        "x:claim:1",
        "r:claim:1:2:3",
        f"r:nuke:{report.id}",
        "🙂",
        "r:claim:" + "9" * 40,
        "w:ok:" + "9" * 40,
        "q:q:" + "9" * 40,
    ):
        outcome = await world.press(OFFICER, data, card)
        assert outcome.alert
    # A press in another unit's chat on this card's message id: not that chat's card.
    outcome = await world.press(OTHER_UNIT, f"r:res:{report.id}", card, chat_id=CD_CHAT)
    assert outcome.notice == t("vi", "triage.not_here")


async def test_transfer_moves_the_card_and_old_card_goes_stale(world):
    report, card = await world.tip(7005)
    await world.press(OFFICER, f"r:xfer:{report.id}", card)
    outcome = await world.press(OFFICER, f"r:xto:{report.id}:cd", card)
    assert outcome.notice == t("vi", "triage.transferred", queue="Cụm Châu Đốc")
    moved = await world.report(report.id)
    assert moved.queue_key == "cd" and moved.status == "new"
    cards = await world.outbox("report_card")
    assert cards[-1].destination == "queue:cd"
    stale = await world.press(OFFICER, f"r:claim:{report.id}", card)
    assert stale.notice == t("vi", "triage.stale_card")
    # The officer of the old unit may no longer act; the new unit's officer may.
    async with world.session_factory() as session, session.begin():
        new_card = next(_messages)
        session.add(CardPost(report_id=report.id, chat_id=CD_CHAT, message_id=new_card))
    assert denied(await world.press(OFFICER, f"r:claim:{report.id}", new_card, chat_id=CD_CHAT))
    ok = await world.press(OTHER_UNIT, f"r:claim:{report.id}", new_card, chat_id=CD_CHAT)
    assert ok.notice == t("vi", "triage.claimed")


async def test_reject_and_duplicate(world):
    first, first_card = await world.tip(7006)
    second, second_card = await world.tip(7007)
    await world.press(OFFICER, f"r:rej:{first.id}", first_card)
    await world.say(OFFICER, "x")  # too short: asked again, nothing changes
    assert (await world.report(first.id)).status == "new"
    await world.say(OFFICER, "Tin nhắn quảng cáo, không phải tố giác")
    rejected = await world.report(first.id)
    assert rejected.status == "rejected" and rejected.reject_reason.startswith("Tin nhắn")
    await world.press(OFFICER, f"r:dup:{second.id}", second_card)
    await world.say(OFFICER, "KHÔNG-PHẢI-MÃ")
    assert (await world.report(second.id)).status == "new"
    await world.say(OFFICER, first.code.lower())
    duplicate = await world.report(second.id)
    assert duplicate.status == "resolved" and duplicate.outcome == "duplicate"
    assert duplicate.duplicate_of_id == first.id


async def test_no_contact_means_no_relay(world):
    report, card = await world.tip(7008, contact="none")
    outcome = await world.press(OFFICER, f"r:ask:{report.id}", card)
    assert outcome.alert and outcome.notice == t("vi", "triage.no_relay")
    async with world.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(ContactRoute)) == 0


async def test_a_question_for_an_unreachable_tipster_is_held_and_the_chat_told(world):
    report, card = await world.tip(7009)
    async with world.session_factory() as session, session.begin():
        route = await session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report.id)
        )
        from storage.types import utcnow

        route.blocked_at = utcnow()
    # Not refused (bot blocked or the Zalo OA's window closed: the delivery holds it).
    outcome = await world.press(OFFICER, f"r:ask:{report.id}", card)
    assert outcome.notice == t("vi", "triage.prompt.sent")
    await world.say(OFFICER, "Bạn thấy mấy người?", reply_to_message_id=card)
    questions = [o for o in await world.outbox("citizen_message") if o.payload.get("relay_id")]
    assert len(questions) == 1 and questions[0].status == "pending"
    held = t("vi", "held.question", code=format_code(report.code))
    notices = [o for o in await world.outbox("chat_text") if o.payload.get("text") == held]
    assert len(notices) == 1 and notices[0].report_id == report.id


async def test_reply_to_the_card_relays_a_question(world):
    _, card = await world.tip(7010)
    await world.say(
        OFFICER, "Bạn có thấy biển số xe không?", reply_to_bot=True, reply_to_message_id=card
    )
    questions = [o for o in await world.outbox("citizen_message") if o.payload.get("relay_id")]
    assert len(questions) == 1
    # A stranger's reply to the card relays nothing.
    await world.say(STRANGER, "spam", reply_to_message_id=card)
    assert (
        len([o for o in await world.outbox("citizen_message") if o.payload.get("relay_id")]) == 1
    )


async def test_someone_elses_reply_button_is_refused(world):
    report, _ = await world.tip(7011)
    intruder = citizen(world.session_factory, 7999, flow=world.dispatcher.flow)
    outcome = await intruder.press_data(f"0:rel:{report.id}")
    assert outcome is not None
    assert outcome.notice == t("vi", "relay.not_yours")
    async with world.session_factory() as session:
        conversation = await session.scalar(
            select(Conversation).where(Conversation.state == "relay")
        )
        assert conversation is None


async def test_add_with_the_pin_when_no_contact(world):
    report, _ = await world.tip(7012, contact="none")
    text = "\n".join(world.citizen.outcomes[-1].replies[0].text.splitlines())
    import re

    found = re.search(r"PIN: (\d{6})", text)
    assert found is not None
    pin = found.group(1)
    other = citizen(world.session_factory, 7013, flow=world.dispatcher.flow)
    await other.command("add", report.code)
    assert other.texts()[0] == t(
        "vi", "relay.add_ask_pin", code=report.code[:5] + "-" + report.code[5:]
    )
    await other.say(pin)
    await other.say("Bổ sung: đối tượng đi xe Wave màu đỏ")
    assert other.texts()[0].startswith("✅")
    assert len(await world.outbox("relay_to_officers")) == 1


async def test_queue_paging_with_60_open_reports(world):
    async with world.session_factory() as session, session.begin():
        from datetime import timedelta

        from storage.types import utcnow

        base = utcnow() - timedelta(days=1)
        for i in range(60):
            session.add(
                Report(
                    code=f"PAGE{i:06d}",
                    kind="tip",
                    category="theft",
                    unit_code="30307",
                    contact_mode="none",
                    pin_hash="x",
                    locale="vi",
                    channel="telegram",
                    status="new",
                    created_at=base + timedelta(minutes=i),
                    updated_at=base,
                )
            )
    await world.say(OFFICER, "/queue", command="queue", reply_to_bot=False)
    page = (await world.outbox("chat_text"))[-1]
    lines = page.payload["text"].splitlines()
    assert "60" in lines[0] and "1/6" in lines[0]
    assert "PAGE0-00000" in lines[1]  # oldest first
    buttons = page.payload["buttons"]
    assert [b["data"] for b in buttons[0]] == ["q:q:2"]
    outcome = await world.press(OFFICER, "q:q:6", 1)
    text, nav = outcome.edit
    assert "6/6" in text and "PAGE0-00059" in text
    assert [b["data"] for b in nav[0]] == ["q:q:5"]
    assert denied(await world.press(STRANGER, "q:q:2", 1))


async def test_commands_enrol_revoke_and_stats(world):
    await world.say(STRANGER, "/enrol", command="enrol", reply_to_bot=False)
    assert (await world.outbox("chat_text"))[-1].payload["text"] == t("vi", "triage.not_permitted")
    await world.say(
        ADMIN,
        "/enrol officer 4242 Lê Văn E",
        command="enrol",
        args="officer 4242 Lê Văn E",
        reply_to_bot=False,
    )
    assert "Lê Văn E" in (await world.outbox("chat_text"))[-1].payload["text"]
    async with world.session_factory() as session:
        officer = await Registry(session).by_telegram(4242)
        assert officer is not None and officer.active and officer.display_name == "Lê Văn E"
    await world.say(ADMIN, "/revoke 4242", command="revoke", args="4242", reply_to_bot=False)
    async with world.session_factory() as session:
        officer = await Registry(session).by_telegram(4242)
        assert officer is not None and not officer.active
    await world.tip(7014)
    await world.say(OFFICER, "/stats", command="stats", reply_to_bot=False)
    stats = (await world.outbox("chat_text"))[-1].payload["text"]
    assert "1" in stats.splitlines()[0] and t("vi", "cat.drugs") in stats


async def test_a_phone_the_tipster_chose_to_leave_is_on_the_card(world):
    from handlers.cards import report_card
    from handlers.security import Keyring
    from tests.driver import TEST_KEY

    report, _ = await world.tip(7020)
    keyring = Keyring(TEST_KEY)
    async with world.session_factory() as session, session.begin():
        stored = await session.get(Report, report.id)
        stored.contact_mode = "phone"
        route = await session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report.id)
        )
        route.phone = keyring.encrypt({"phone": "+84901234567"})
    async with world.session_factory() as session:
        with_key = await report_card(session, report.id, locale="vi", keyring=keyring)
        without = await report_card(session, report.id, locale="vi")
    assert "+84901234567" in with_key.text
    assert "+84901234567" not in without.text
