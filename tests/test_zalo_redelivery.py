# ruff: noqa: F811 - the stand-in fixtures are imported from the flow tests
"""What Zalo delivers twice and what is too long for one Zalo message, end to end through the
HTTP stand-ins of Telegram, the Zalo Bot Platform and the Zalo OA, on SQLite and PostgreSQL.

* The message that confirms a tip, delivered twice with the same message id (the Zalo bot by
  long polling and by webhook, the OA by webhook, the copies at once): one report, one card, one
  code sent.
* A message of 2,500 characters to a Zalo citizen: two messages, each within Zalo's 2,000, in
  order, nothing lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.zalo.bot_channel import WEBHOOK_PATH
from handlers import outbox
from handlers.channels import CAPABILITIES
from handlers.citizen.relay import question_reply
from handlers.i18n import t
from storage.models import OutboxMessage, RelayMessage, Report
from tests.standin.zalo_bot import post_webhook
from tests.test_zalo_flows import (  # noqa: F401 (fixtures)
    LX,
    SUBMITTED,
    BotCitizen,
    OACitizen,
    card_in_group,
    flow_settings,
    served,
    submitted,
    telegram,
    type_tip,
    type_to_evidence,
    until,
    zalo_bot,
    zalo_oa,
)

BOT_SECRET = "zalo-webhook-secret-0123456789"


class WebhookBotCitizen(BotCitizen):
    """A citizen on the Zalo bot whose updates Zalo posts to tinbao's webhook."""

    async def deliver(self, update: dict) -> None:
        url = f"{self.service.test_url}{WEBHOOK_PATH}"
        assert await post_webhook(url, update, BOT_SECRET) == 200


@pytest.fixture(params=["zalo_bot polling", "zalo_bot webhook", "zalo_oa webhook"])
async def citizen(request, telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path):
    """A Zalo citizen of the service, on each channel and way of receiving."""
    webhook = request.param == "zalo_bot webhook"
    extra = (
        {
            "zalo_bot_webhook_url": f"https://tinbao.example{WEBHOOK_PATH}",
            "zalo_bot_webhook_secret": BOT_SECRET,
        }
        if webhook
        else {}
    )
    settings = flow_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path, **extra)
    async with served(settings) as service:
        if request.param.startswith("zalo_oa"):
            yield OACitizen(service, zalo_oa, "8100000000000000201")
            return
        if webhook:
            async with asyncio.timeout(30):  # the channel sets its webhook as it starts
                while zalo_bot.webhook is None:  # noqa: ASYNC110 - the hook lives in the stand-in
                    await asyncio.sleep(0.05)
            yield WebhookBotCitizen(service, zalo_bot, "7100000000000000201")
        else:
            yield BotCitizen(service, zalo_bot, "7100000000000000201")


# ---------------------------------------------------------------------- the same msg_id twice


async def test_a_confirmation_delivered_twice_gives_one_report_one_card_one_code(
    citizen, telegram
):
    service = citizen.service
    description = "Trộm xe máy trước cổng chợ Long Xuyên lúc sáng sớm"
    await type_to_evidence(citizen, description)
    await citizen.say("bỏ qua")  # no evidence
    assert description in await citizen.say("1")  # contact through the bot: the summary
    confirm = citizen.update("có")  # one message, one message id
    spool = service.spool.spool
    appended, before = spool.appended, len(citizen.received())
    # Zalo's retry of a slow delivery comes while the first is still being handled.
    await asyncio.gather(citizen.deliver(confirm), citizen.deliver(confirm))
    await until(lambda: _now(spool.appended >= appended + 2))  # both written down
    await service.spool.drained()  # and both handled (or recognised)
    after = citizen.received()[before:]
    codes = [SUBMITTED.search(text) for text in after]
    assert len([c for c in codes if c is not None]) == 1, after  # one code and PIN sent
    code, _ = submitted("\n".join(after))
    assert not [text for text in after if t("vi", "answers.not_understood", text="")[:8] in text]
    await card_in_group(telegram, LX.id, code)

    async def cards_settled() -> bool:
        async with service.session_factory() as session:
            waiting = await session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(
                    OutboxMessage.kind == outbox.Kind.REPORT_CARD.value,
                    OutboxMessage.status.in_(("pending", "sending")),
                )
            )
            return waiting == 0

    await until(cards_settled)
    async with service.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Report)) == 1
        cards = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.kind == outbox.Kind.REPORT_CARD.value)
        )
        assert cards == 1
    posted = [
        c
        for c in telegram.calls
        if c.method == "sendMessage" and c.ok and code in (c.text or "") and c.chat_id == LX.id
    ]
    assert len(posted) == 1  # one card in the officers' group
    # The chat goes on: the next message is answered as usual, once.
    assert t("vi", "status.new") in await citizen.say(f"status {code} {submitted(after[-1])[1]}")


# ---------------------------------------------------------------------- 2,500 characters


def _long_question() -> str:
    """About 2,500 characters of numbered words, so that order and loss both show."""
    words = [f"từ{n:04d}" for n in range(1, 360)]
    text = " ".join(words)
    assert 2450 <= len(text) <= 2600
    return text


@pytest.mark.parametrize("channel", ["zalo_bot", "zalo_oa"])
async def test_a_2500_character_message_reaches_a_zalo_citizen_as_two_in_order(
    channel, telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path
):
    settings = flow_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path)
    async with served(settings) as service:
        if channel == "zalo_bot":
            citizen: BotCitizen | OACitizen = BotCitizen(service, zalo_bot, "7100000000000000202")
        else:
            citizen = OACitizen(service, zalo_oa, "8100000000000000202")
        code, _ = await type_tip(citizen, "Trộm điện thoại trong quán cà phê đầu hẻm 7")
        await card_in_group(telegram, LX.id, code)
        question = _long_question()
        before = len(citizen.received())
        # A message to the tipster as the officers' question writes it (the relay message and
        # its outbox row), longer than any one Zalo message; the service's delivery sends it.
        async with service.session_factory() as session, session.begin():
            report = await session.scalar(select(Report))
            assert report is not None
            report_id, raw_code = report.id, report.code
            relay = RelayMessage(report_id=report.id, direction="to_citizen", text=question)
            session.add(relay)
            await session.flush()
            outbox.enqueue(
                session,
                outbox.CitizenPayload(relay_id=relay.id),
                outbox.Destination.citizen(report.id),
                report_id=report.id,
            )
        assert service.messenger is not None
        service.messenger.kick()
        await until(lambda: _now(any("từ0359" in m for m in citizen.received()[before:])))
        await asyncio.sleep(0.3)  # nothing more follows
        parts = citizen.received()[before:]
        assert len(parts) == 2, [len(p) for p in parts]
        assert all(1 <= len(p) <= 2000 for p in parts)
        expected = question_reply("vi", report_id, raw_code, question, CAPABILITIES[channel]).text
        assert " ".join(" ".join(parts).split()) == " ".join(expected.split())  # in order, whole
        words = [w for w in " ".join(parts).split() if w.startswith("từ")]
        assert words == question.split()


async def _now(value: bool) -> bool:
    return value
