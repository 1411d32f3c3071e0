"""Typed answers, Telegram replies and edits: end to end through python-telegram-bot and the
Bot API stand-in. The citizen here never presses an inline button."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from handlers.i18n import t
from handlers.security import format_code
from storage.models import CardPost, Conversation, OutboxMessage, Report
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory

LX = Group(-1002000000001, "Công an phường Long Xuyên")
ADMIN_ID = 525252


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path: Path):
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        'units = ["30307", "30292"]\n',
        encoding="utf-8",
    )
    settings = service_settings(
        standin,
        db_url,
        tmp_path,
        queues_file=queues,
        duty_chat_id=-1009999999999,
        admin_telegram_ids=[ADMIN_ID],
    )
    async with running_service(settings) as running:
        yield running


async def reports(service) -> list[Report]:
    async with service.session_factory() as session:
        return list((await session.scalars(select(Report).order_by(Report.id))).all())


async def draft(service) -> dict:
    """The open draft, if any (officers' chats may keep conversations of their own)."""
    async with service.session_factory() as session:
        conversations = (await session.scalars(select(Conversation))).all()
        drafts = [dict(c.data.get("draft") or {}) for c in conversations]
        return next((d for d in drafts if d), {})


def no_presses(standin: BotAPIStandIn) -> None:
    assert not standin.calls_for("answerCallbackQuery"), "the citizen pressed nothing"


async def test_a_tip_typed_in_words_and_numbers_half_without_accents(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.new_user(first_name="An", user_id=990001))
    await chat.command("start")
    await chat.say("to giac bao tin toi pham")  # the menu button's words, no accents
    await chat.say("Ma túy")  # a category, with accents
    await chat.say("long xuyen")
    shown = chat.texts(await chat.say("1"))  # the first commune offered
    assert any(t("vi", "when.ask") in text for text in shown)
    await chat.say("tối qua khoảng 21 giờ")  # "when" in the citizen's own words
    await chat.say("Mua bán ma túy ở quán nước đầu hẻm 5, tối nào cũng có")
    await chat.say("bo qua")  # no evidence
    await chat.say("tro chuyen an danh qua bot")
    done = chat.texts(await chat.say("Gửi tin báo"))
    no_presses(standin)
    [report] = await reports(service)
    assert (report.kind, report.category, report.unit_code) == ("tip", "drugs", "30307")
    assert (report.occurred, report.occurred_text) == ("earlier", "tối qua khoảng 21 giờ")
    assert report.contact_mode == "relay"
    assert any(report.code[:4] in text.replace("-", "") for text in done)


async def test_an_accident_typed_in_words(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.new_user(first_name="Bình", user_id=990002))
    await chat.command("start")
    await chat.say("Bao tai nan giao thong")
    await chat.say("Ngã tư cầu Cái Sơn, phường Long Xuyên")
    await chat.say("2 người bị thương")
    shown = chat.texts(await chat.say("bỏ qua"))  # no photo: send now
    no_presses(standin)
    [report] = await reports(service)
    assert (report.kind, report.injured, report.injured_count) == ("emergency", "yes", 2)
    assert report.place_text == "Ngã tư cầu Cái Sơn, phường Long Xuyên"
    assert any("113" in text or "115" in text for text in shown)


async def test_two_misses_get_the_help_line_and_the_way_out(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.new_user(first_name="Chi", user_id=990003))
    await chat.command("start")
    await chat.say("1")  # the menu's first choice: a tip
    first = "\n".join(chat.texts(await chat.say("qwerty zzz")))
    assert "qwerty zzz" in first
    assert t("vi", "answers.help") not in first
    assert "1. " + t("vi", "cat.drugs") in first  # the numbered choices, shown again
    second = "\n".join(chat.texts(await chat.say("asdf")))
    assert t("vi", "answers.help") in second
    assert "/cancel" in second and "0" in second
    out = "\n".join(chat.texts(await chat.say("0")))
    assert t("vi", "tip.cancelled") in out
    assert await draft(service) == {}


async def test_an_edited_description_replaces_the_text_in_the_draft(standin, service):
    factory = UpdateFactory(standin)
    user = factory.new_user(first_name="Dũng", user_id=990004)
    chat = Chat(standin, factory, service, user)
    await chat.command("start")
    await chat.say("to giac")
    await chat.say("trom cap tai san")
    await chat.say("Tôi không biết")
    await chat.say("hom nay")
    original = factory.text(user, "Trộm xe máy trước cổng chợ Long Xuyên")
    await chat.send(original)
    assert (await draft(service))["description"].startswith("Trộm xe máy")
    edited = factory.edited_text(original, "Trộm xe máy Honda Wave trước cổng chợ Long Xuyên")
    shown = "\n".join(chat.texts(await chat.send(edited)))
    assert t("vi", "answers.edit_replaced") in shown
    assert (await draft(service))["description"] == (
        "Trộm xe máy Honda Wave trước cổng chợ Long Xuyên"
    )
    # An edit of an older message is not seen, and the citizen is told so once.
    hello = factory.text(user, "xong")
    await chat.send(hello)
    told = "\n".join(chat.texts(await chat.send(factory.edited_text(hello, "bỏ qua"))))
    assert t("vi", "answers.edit_not_seen") in told
    assert not chat.texts(await chat.send(factory.edited_text(hello, "bỏ qua nhé")))


async def until(predicate, seconds: float = 30.0):
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - state lives in the database
            await asyncio.sleep(0.05)


async def test_a_telegram_reply_to_a_relayed_question_reaches_the_officers(standin, service):
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Bí Mật", user_id=990005)
    officer = factory.new_user(first_name="Trung úy", last_name="Lâm", user_id=990006)
    admin = factory.new_user(first_name="Quản trị", user_id=ADMIN_ID)
    chat = Chat(standin, factory, service, tipster)

    async def group_send(update):
        before = service.telegram.updates_handled
        standin.push_update(update)
        await service.telegram.wait_handled(before + 1)

    hello = factory.group_text(officer, "Chào mọi người", group=LX)["message"]
    enrol = factory.group_command(admin, "enrol", "officer", group=LX)
    enrol["message"]["reply_to_message"] = hello
    await group_send(enrol)
    await chat.command("start")
    for text in ("to giac", "ma tuy", "long xuyen", "1", "hom nay"):
        await chat.say(text)
    await chat.say("Mua bán ma túy ở quán nước đầu hẻm 5")
    for text in ("bo qua", "tro chuyen an danh", "gui"):
        await chat.say(text)
    card = (
        await standin.wait_for(
            lambda c: (
                c.method == "sendMessage" and c.chat_id == LX.id and "r:claim:" in str(c.params)
            ),
            timeout=10,
        )
    ).result

    async def posted() -> bool:
        async with service.session_factory() as session:
            return await session.scalar(select(CardPost)) is not None

    await until(posted)

    def data(message: dict, prefix: str) -> str:
        rows = message["reply_markup"]["inline_keyboard"]
        return next(
            b["callback_data"] for r in rows for b in r if b["callback_data"].startswith(prefix)
        )

    await group_send(factory.callback(officer, data(card, "r:claim:"), message=card))
    await group_send(factory.callback(officer, data(card, "r:ask:"), message=card))
    prompt = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
        timeout=10,
    )
    await group_send(factory.group_text(officer, "Quán tên gì?", group=LX, reply_to=prompt.result))
    question = await standin.wait_for(
        lambda c: c.chat_id == tipster.id and "Quán tên gì" in (c.text or ""), timeout=10
    )

    async def delivered() -> bool:
        async with service.session_factory() as session:
            rows = await session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == "citizen_message")
            )
            return any("sent_message_id" in (r.payload or {}) for r in rows)

    await until(delivered)
    # Meanwhile the tipster has started another tip; the swipe-reply still answers.
    await chat.say("to giac")
    answer = factory.text(tipster, "Quán Cô Ba, mở từ 6 giờ", reply_to=question.result)
    shown = "\n".join(chat.texts(await chat.send(answer)))
    [report] = await reports(service)
    assert t("vi", "relay.sent", code=format_code(report.code)) in shown
    await standin.wait_for(
        lambda c: c.chat_id == LX.id and "Quán Cô Ba" in (c.text or ""), timeout=10
    )
    assert report.status == "in_progress"
    assert (await draft(service)) != {}  # the new tip is still there
    no_presses_by_tipster = [
        c for c in standin.calls_for("answerCallbackQuery") if c.chat_id == tipster.id
    ]
    assert not no_presses_by_tipster
