"""A channel with no buttons, no reply keyboards, no edits and no reply-to (the capabilities of
Zalo's bot): the same flows, through the dispatcher and :func:`handlers.render.render`, show
numbered choices and never a button."""

from __future__ import annotations

import itertools
import re

import pytest
from sqlalchemy import select

from bot.dispatch import Dispatcher
from handlers.channels import CAPABILITIES, ChannelName
from handlers.events import Button, Keyboard, Message, Reply, Sender
from handlers.i18n import t
from handlers.render import number_buttons, numbered_text, render, split_text
from handlers.security import format_code
from storage.models import RelayMessage, Report
from tests.driver import FileStore, make_flow, sync_units

CAPS = CAPABILITIES[ChannelName.ZALO_BOT]
_ids = itertools.count(50_000)


class TextOnlyChannel:
    """A stand-in channel: typed messages in, rendered texts out; it has nothing else."""

    def __init__(self, dispatcher: Dispatcher, user_id: str) -> None:
        self.dispatcher = dispatcher
        self.sender = Sender(ChannelName.ZALO_BOT.value, user_id, user_id, "vi")
        self.sent: list[str] = []

    async def say(self, text: str) -> str:
        event = Message(update_id=next(_ids), sender=self.sender, text=text)
        outcome = await self.dispatcher.process(event, FileStore())
        assert outcome is not None
        shown = render(outcome.replies, CAPS)
        for reply in shown:
            assert not reply.buttons and reply.keyboard is None and not reply.remove_keyboard
            assert len(reply.text) <= CAPS.max_text
        texts = [reply.text for reply in shown]
        self.sent += texts
        return "\n".join(texts)

    def number_of(self, label: str) -> str:
        """The number the last list gives ``label`` (as the citizen reads it)."""
        for line in reversed("\n".join(self.sent).splitlines()):
            found = re.fullmatch(r"(\d+)\. (.+)", line)
            if found and found.group(2) == label:
                return found.group(1)
        raise AssertionError(f"{label!r} is not in a numbered list")


@pytest.fixture
async def channel(session_factory):
    await sync_units(session_factory)
    return TextOnlyChannel(Dispatcher(session_factory, make_flow()), "zalo-user-1")


async def test_a_tip_and_an_accident_by_numbers_only(channel, session_factory):
    menu = await channel.say("xin chào")
    assert "1. " + t("vi", "menu.tip") in menu
    await channel.say(channel.number_of(t("vi", "menu.tip")))
    await channel.say(channel.number_of(t("vi", "cat.theft")))
    assert "• " + t("vi", "place.dont_know") in channel.sent[-1]
    await channel.say("long xuyen")
    await channel.say(channel.number_of("Phường Long Xuyên"))
    await channel.say(channel.number_of(t("vi", "when.now")))
    evidence = await channel.say("Trộm xe máy trước cổng chợ Long Xuyên")
    assert "0. " + t("vi", "common.cancel") in evidence
    await channel.say(channel.number_of(t("vi", "ev.skip")))
    await channel.say(channel.number_of(t("vi", "contact.relay", mark="✓ ")))
    done = await channel.say(channel.number_of(t("vi", "summary.confirm")))
    async with session_factory() as session:
        [report] = (await session.scalars(select(Report))).all()
    assert (report.category, report.unit_code, report.channel) == ("theft", "30307", "zalo_bot")
    assert format_code(report.code) in done

    await channel.say(channel.number_of(t("vi", "menu.accident")))
    await channel.say("Quốc lộ 91, gần cầu Bình Đức")
    await channel.say(channel.number_of(t("vi", "acc.inj_1")))
    await channel.say(channel.number_of(t("vi", "acc.send_now")))
    async with session_factory() as session:
        emergency = await session.scalar(select(Report).where(Report.kind == "emergency"))
    assert emergency is not None and emergency.injured_count == 1


async def test_without_reply_to_the_next_message_answers_a_question(channel, session_factory):
    await channel.say("menu")
    for label in ("menu.tip", "cat.drugs"):
        await channel.say(channel.number_of(t("vi", label)))
    await channel.say(t("vi", "place.dont_know"))
    await channel.say("hom nay")
    await channel.say("Mua bán ma túy ở quán nước đầu hẻm 5")
    for answer in ("xong", "tro chuyen an danh", "co"):
        await channel.say(answer)
    await channel.say(channel.number_of(t("vi", "menu.tip")))  # a new report
    async with session_factory() as session, session.begin():
        report = await session.scalar(select(Report))
        assert report is not None
        report.status = "needs_info"  # the officers asked a question
        code = format_code(report.code)
    # Mid-report, one line says how to answer afterwards (once), and the report goes on.
    hinted = await channel.say("Ma túy")
    assert t("vi", "answers.relay_after_report", code=code) in hinted
    assert t("vi", "answers.relay_after_report", code=code) not in await channel.say("abc xyz")
    await channel.say("0")
    # Now the next message is the answer.
    confirmed = await channel.say("Quán Cô Ba, mở từ 6 giờ")
    assert t("vi", "relay.sent", code=code) in confirmed
    async with session_factory() as session:
        relayed = await session.scalar(select(RelayMessage))
        report = await session.scalar(select(Report))
    assert relayed is not None and relayed.text == "Quán Cô Ba, mở từ 6 giờ"
    assert report is not None and report.status == "in_progress"


def test_render_keeps_buttons_where_the_channel_has_them():
    reply = Reply(
        text="Chọn",
        buttons=[[Button("A", "3:a"), Button("B", "3:b")], [Button("Hủy", "3:x")]],
        keyboard=Keyboard(request_location="📍", labels=("Tôi không biết",)),
    )
    [telegram] = render([reply], CAPABILITIES[ChannelName.TELEGRAM])
    assert telegram.buttons == reply.buttons and telegram.text == "Chọn"
    [text_only] = render([reply], CAPS)
    assert text_only.buttons == [] and text_only.keyboard is None
    assert text_only.text == "Chọn\n\n1. A\n2. B\n0. Hủy\n• Tôi không biết"
    assert [n for n, _ in number_buttons(reply.buttons)] == [1, 2, 0]
    assert numbered_text(reply.buttons).splitlines()[-1] == "0. Hủy"


def test_long_text_is_split_at_the_channel_limit_and_buttons_go_last():
    text = "\n".join(f"dòng {i} " + "chữ " * 30 for i in range(100))
    parts = render([Reply(text=text, buttons=[[Button("OK", "1:sum:ok")]])], CAPS)
    assert len(parts) > 1 and all(len(p.text) <= CAPS.max_text for p in parts)
    assert parts[-1].text.endswith("1. OK")
    assert all(len(p) <= 50 for p in split_text("x" * 120, 50))
