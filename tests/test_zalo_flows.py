"""Whole flows for citizens on Zalo, typed only, with the officers in Telegram: tips and
accident reports on both Zalo channels, the relay both ways, the OA's 7-day window, codes
across channels. Everything goes through the HTTP stand-ins of Telegram, the Zalo Bot
Platform and the Zalo OA, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from admin.web import build_web_app
from bot.runtime import Service
from bot.zalo import ZaloBotChannel, ZaloOAChannel
from config.settings import Settings
from handlers.i18n import t
from handlers.security import format_code
from storage.models import CardPost, ContactRoute, OutboxMessage, Report
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory
from tests.standin.zalo_bot import DEFAULT_TOKEN, ZaloBotStandIn, ZaloUser
from tests.standin.zalo_oa import (
    APP_ID,
    APP_SECRET,
    FIRST_REFRESH_TOKEN,
    OA_SECRET_KEY,
    ZaloOAStandIn,
    signed,
)

LX = Group(-1002000000001, "Công an phường Long Xuyên")
DUTY = -1009999999999
ADMIN_ID = 616161
SUBMITTED = re.compile(r"([A-Z0-9]{5}-[A-Z0-9]{5})\D+(\d{6})")


@pytest.fixture
async def telegram():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def zalo_bot():
    async with ZaloBotStandIn() as server:
        yield server


@pytest.fixture
async def zalo_oa():
    async with ZaloOAStandIn() as server:
        yield server


def flow_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path: Path, **extra) -> Settings:
    """Both Zalo channels (the bot by long polling unless ``extra`` says otherwise), the
    officers in Telegram, and the Long Xuyên queue."""
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        'units = ["30307", "30292"]\n',
        encoding="utf-8",
    )
    return service_settings(
        telegram,
        db_url,
        tmp_path,
        zalo_bot_token=DEFAULT_TOKEN,
        zalo_bot_api_url=zalo_bot.api_url,
        zalo_bot_polling_timeout=1,
        zalo_oa_app_id=APP_ID,
        zalo_oa_secret_key=OA_SECRET_KEY,
        zalo_app_secret=APP_SECRET,
        zalo_oa_refresh_token=FIRST_REFRESH_TOKEN,
        zalo_oa_api_url=zalo_oa.url,
        zalo_oauth_url=zalo_oa.url,
        queues_file=queues,
        duty_chat_id=DUTY,
        admin_telegram_ids=[ADMIN_ID],
        **extra,
    )


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Service]:
    """The running service with its web server (the webhooks, ``/healthz``) at ``test_url``."""
    async with running_service(settings) as running:
        runner = aiohttp.web.AppRunner(build_web_app(running))
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        running.test_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        try:
            yield running
        finally:
            await runner.cleanup()


@pytest.fixture
async def service(telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path):
    async with served(flow_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path)) as running:
        yield running


async def until(predicate, seconds: float = 30.0):
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - state lives in the database or a stand-in
            await asyncio.sleep(0.05)


class BotCitizen:
    """A citizen typing to the police's Zalo bot (long polling)."""

    def __init__(self, service, standin: ZaloBotStandIn, user_id: str, name: str = "Nguyễn A"):
        self.service, self.standin = service, standin
        self.user = ZaloUser(user_id, display_name=name)
        self.channel: ZaloBotChannel = service.channels.get("zalo_bot")

    @property
    def user_id(self) -> str:
        return self.user.user_id

    def update(self, text: str) -> dict:
        return self.user.text(text)

    def image(self, url: str) -> dict:
        return self.user.image(url)

    async def deliver(self, update: dict) -> None:
        """Zalo hands ``update`` out (at the next ``getUpdates``)."""
        self.standin.updates.put_nowait(update)

    async def send(self, update: dict) -> str:
        """Deliver ``update``, wait until it is handled; what the citizen received meanwhile."""
        before = len(self.received())
        target = self.channel.updates_handled + 1
        await self.deliver(update)
        await self.channel.wait_handled(target, timeout=20)
        return "\n".join(self.received()[before:])

    async def say(self, text: str) -> str:
        return await self.send(self.update(text))

    def received(self) -> list[str]:
        return self.standin.sent(self.user_id)


class OACitizen:
    """A citizen writing to the police unit's Zalo OA (signed webhook events)."""

    def __init__(self, service, standin: ZaloOAStandIn, user_id: str, name: str = "Trần B"):
        self.service, self.standin = service, standin
        self.user_id, self.display_name = user_id, name
        self.channel: ZaloOAChannel = service.channels.get("zalo_oa")

    async def event(self, name: str, message: dict | None, *, handled: bool = True) -> None:
        target = self.channel.updates_handled + 1
        await self.deliver(self.standin.event(self.user_id, name, message))
        if handled:
            await self.channel.wait_handled(target, timeout=20)

    def update(self, text: str) -> dict:
        return self.standin.event(self.user_id, "user_send_text", {"text": text})

    def image(self, url: str) -> dict:
        attachment = {"type": "image", "payload": {"url": url, "thumbnail": url}}
        return self.standin.event(self.user_id, "user_send_image", {"attachments": [attachment]})

    async def deliver(self, event: dict) -> None:
        """Zalo posts ``event`` to the webhook, signed; the same bytes each time."""
        raw, headers = signed(event)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.service.test_url}/zalo/oa/webhook", data=raw, headers=headers) as r,
        ):
            assert r.status == 200

    async def send(self, event: dict) -> str:
        """Deliver ``event``, wait until it is handled; what the citizen received meanwhile."""
        before = len(self.received())
        target = self.channel.updates_handled + 1
        await self.deliver(event)
        await self.channel.wait_handled(target, timeout=20)
        return "\n".join(self.received()[before:])

    async def say(self, text: str) -> str:
        return await self.send(self.update(text))

    def received(self) -> list[str]:
        return self.standin.delivered(self.user_id)


async def type_tip(citizen, description: str) -> tuple[str, str]:
    """A theft tip typed from the menu to the confirmation; its code and PIN."""
    await type_to_evidence(citizen, description)
    await citizen.say("bỏ qua")  # no evidence
    summary = await citizen.say("1")  # contact through the bot
    assert description in summary
    done = await citizen.say("có")  # confirm
    return submitted(done)


def submitted(done: str) -> tuple[str, str]:
    """The code and PIN in the answer to a confirmation."""
    found = SUBMITTED.search(done)
    assert found is not None, done
    return found.group(1), found.group(2)


async def type_to_evidence(citizen, description: str) -> str:
    """A theft tip typed from the menu to its description; the evidence step's prompt."""
    menu = await citizen.say("xin chào")
    assert "1. " in menu and "0. " not in menu.split("\n")[0]
    categories = await citizen.say("1")  # the menu's first choice: a tip
    assert f". {t('vi', 'cat.theft')}" in categories
    await citizen.say(t("vi", "cat.theft").lower())  # by its words, without the number
    places = await citizen.say("long xuyen")
    assert "Long Xuyên" in places
    await citizen.say("1")
    await citizen.say("vừa xong")  # "now", typed as words
    return await citizen.say(description)


async def type_accident(citizen) -> tuple[str, str]:
    await citizen.say("/start")
    numbers = await citizen.say("/tainan")
    assert "113" in numbers or "115" in numbers
    await citizen.say("Ngã tư Trần Hưng Đạo và Hà Hoàng Hổ, phường Long Xuyên")
    photo = await citizen.say("2 người")  # two people hurt, typed as the label says
    assert "1. " in photo  # «send now» as a number
    done = await citizen.say("bỏ qua")  # no photo: send now
    found = SUBMITTED.search(done)
    assert found is not None, done
    return found.group(1), found.group(2)


async def card_in_group(telegram, chat_id: int, code: str) -> dict:
    call = await telegram.wait_for(
        lambda c: (
            c.method == "sendMessage"
            and c.chat_id == chat_id
            and c.ok
            and code in (c.text or "")
            and "r:claim:" in str(c.params.get("reply_markup"))
        ),
        timeout=15,
    )
    return call.result


def button(message: dict, prefix: str) -> str:
    for row in message["reply_markup"]["inline_keyboard"]:
        for b in row:
            if b["callback_data"].startswith(prefix):
                return b["callback_data"]
    raise AssertionError(f"no {prefix} button")


class Officers:
    """An officer working in the Long Xuyên group on Telegram."""

    def __init__(self, service, telegram):
        self.service, self.telegram = service, telegram
        self.factory = UpdateFactory(telegram)
        self.officer = self.factory.new_user(first_name="Cán bộ", user_id=ADMIN_ID)

    async def send(self, update) -> None:
        before = self.service.telegram.updates_handled
        self.telegram.push_update(update)
        await self.service.telegram.wait_handled(before + 1)

    async def ask(self, card: dict, question: str) -> None:
        async def posted() -> bool:  # this card's post is recorded after its send returns
            async with self.service.session_factory() as session:
                found = await session.scalar(
                    select(CardPost).where(CardPost.message_id == card["message_id"])
                )
                return found is not None

        await until(posted)
        start = len(self.telegram.calls)
        await self.send(self.factory.callback(self.officer, button(card, "r:ask:"), message=card))
        prompt = await self.telegram.wait_for(
            lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
            timeout=15,
            start=start,
        )
        await self.send(
            self.factory.group_text(self.officer, question, group=LX, reply_to=prompt.result)
        )

    async def relayed(self, text: str):
        return await self.telegram.wait_for(
            lambda c: c.chat_id == LX.id and c.ok and text in (c.text or ""), timeout=15
        )


async def got(citizen, needle: str) -> str:
    """Wait for a message to the citizen containing ``needle`` (the outbox sends it)."""
    found: list[str] = []

    async def arrived() -> bool:
        found[:] = [m for m in citizen.received() if needle in m]
        return bool(found)

    await until(arrived)
    return found[-1]


# ---------------------------------------------------------------------- complete reports


@pytest.mark.parametrize("channel", ["zalo_bot", "zalo_oa"])
async def test_a_tip_and_the_relay_both_ways_typed_on_zalo(
    service, telegram, zalo_bot, zalo_oa, channel
):
    if channel == "zalo_bot":
        citizen: BotCitizen | OACitizen = BotCitizen(service, zalo_bot, "7100000000000000001")
    else:
        citizen = OACitizen(service, zalo_oa, "8100000000000000001")
    code, _ = await type_tip(citizen, "Trộm xe máy trước chợ Long Xuyên lúc tan chợ")
    card = await card_in_group(telegram, LX.id, code)
    # The card names the channel (web.card.channel), never the tipster.
    assert citizen.user_id not in str(card) and "Nguyễn A" not in str(card)
    officers = Officers(service, telegram)
    await officers.ask(card, "Xe màu gì, biển số bao nhiêu?")
    question = await got(citizen, "Xe màu gì")
    assert question.startswith(t("vi", "answers.question_type_now").split("{")[0][:20])
    assert "Cán bộ" not in question
    confirmation = await citizen.say("Xe Wave màu đỏ, biển 67B1-123.45")
    assert t("vi", "relay.sent", code=code) in confirmation
    relayed = await officers.relayed("Xe Wave màu đỏ")
    assert relayed.params["reply_parameters"]["message_id"] == card["message_id"]
    for call in telegram.calls:
        assert citizen.user_id not in str(call.params)
    async with service.session_factory() as session:
        report = await session.scalar(select(Report).where(Report.code == code.replace("-", "")))
        assert report is not None and report.status == "in_progress"


@pytest.mark.parametrize("channel", ["zalo_bot", "zalo_oa"])
async def test_an_accident_report_typed_on_zalo_reaches_the_duty_group(
    service, telegram, zalo_bot, zalo_oa, channel
):
    if channel == "zalo_bot":
        citizen: BotCitizen | OACitizen = BotCitizen(service, zalo_bot, "7100000000000000002")
    else:
        citizen = OACitizen(service, zalo_oa, "8100000000000000002")
    code, _ = await type_accident(citizen)
    await telegram.wait_for(
        lambda c: c.method == "sendMessage" and c.ok and code in (c.text or ""), timeout=15
    )
    async with service.session_factory() as session:
        report = await session.scalar(select(Report).where(Report.code == code.replace("-", "")))
        assert report is not None and report.kind == "emergency"


# ---------------------------------------------------------------------- the OA's 7-day window


async def test_a_closed_oa_window_holds_the_question_until_the_tipster_writes(
    service, telegram, zalo_oa
):
    citizen = OACitizen(service, zalo_oa, "8100000000000000003")
    code, _ = await type_tip(citizen, "Trộm chó ban đêm ở khóm Đông Thịnh")
    card = await card_in_group(telegram, LX.id, code)
    zalo_oa.close_window(citizen.user_id)  # eight days pass without a word from the tipster
    officers = Officers(service, telegram)
    await officers.ask(card, "Mấy giờ thì trộm tới?")
    # The officers are told once that the tipster cannot be reached until they write again.
    notice = t("vi", "zalo.tipster_unreachable", code=code)
    await officers.relayed(notice.split("\n")[0][:40])
    await until(lambda: _async(bool(zalo_oa.refused(citizen.user_id))))
    assert zalo_oa.refused(citizen.user_id)[0].error == -230
    async with service.session_factory() as session:
        route = await session.scalar(select(ContactRoute))
        assert route is not None and route.blocked_at is not None
        rows = (
            await session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == "citizen_message")
            )
        ).all()
        held = [r for r in rows if r.payload.get("relay_id")]
        assert len(held) == 1 and held[0].status == "pending"  # held, not failed
    await asyncio.sleep(2.5)  # the delivery runs again meanwhile: nothing goes, nothing fails
    assert not [m for m in citizen.received() if "Mấy giờ" in m]
    assert len(zalo_oa.refused(citizen.user_id)) == 1
    # The tipster writes again: the window opens, the held question goes out at once, and the
    # greeting is not taken as its answer.
    await citizen.say("xin chào")
    question = await got(citizen, "Mấy giờ thì trộm tới?")
    assert format_code(code.replace("-", "")) in question
    async with service.session_factory() as session:
        route = await session.scalar(select(ContactRoute))
        assert route is not None and route.blocked_at is None
        report = await session.scalar(select(Report))
        assert report is not None and report.status == "needs_info"
    await citizen.say("Khoảng 2 giờ sáng")
    await officers.relayed("Khoảng 2 giờ sáng")
    notices = [c for c in telegram.calls if c.chat_id == LX.id and code in (c.text or "")]
    assert sum((c.text or "").startswith(notice[:40]) for c in notices) == 1


async def test_an_unfollowed_oa_holds_until_the_tipster_follows_again(service, telegram, zalo_oa):
    citizen = OACitizen(service, zalo_oa, "8100000000000000004")
    code, _ = await type_tip(citizen, "Trộm điện thoại ở bến xe Long Xuyên")
    card = await card_in_group(telegram, LX.id, code)
    await citizen.event("unfollow", None, handled=False)  # nothing to answer
    officers = Officers(service, telegram)
    await officers.ask(card, "Người đó mặc áo gì?")
    await until(lambda: _async(bool(zalo_oa.refused(citizen.user_id))))
    assert zalo_oa.refused(citizen.user_id)[0].error == -213

    async def held() -> bool:  # the delivery marks the route after the refusal comes back
        async with service.session_factory() as session:
            route = await session.scalar(select(ContactRoute))
            return route is not None and route.blocked_at is not None

    await until(held)
    await citizen.event("follow", None)  # following again greets, and releases the question
    await got(citizen, "Người đó mặc áo gì?")


async def _async(value: bool) -> bool:
    return value


# ---------------------------------------------------------------------- codes across channels


async def test_codes_work_across_channels(service, telegram, zalo_bot, zalo_oa):
    # A tip on Telegram, checked from the Zalo bot with "status CODE PIN" typed, no slash.
    factory = UpdateFactory(telegram)
    tipster = factory.new_user(first_name="Ẩn Danh", user_id=880777)
    chat = Chat(telegram, factory, service, tipster)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.drugs"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Mua bán ma túy ở quán nước đầu hẻm 5")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.relay", mark="✓ "))
    await chat.press(t("vi", "summary.confirm"))
    done = await telegram.wait_for(
        lambda c: c.chat_id == tipster.id and SUBMITTED.search(c.text or "") is not None,
        timeout=15,
    )
    found = SUBMITTED.search(done.text)
    assert found is not None, done.text
    tg_code, tg_pin = found.groups()
    on_zalo = BotCitizen(service, zalo_bot, "7100000000000000005")
    answer = await on_zalo.say(f"status {tg_code} {tg_pin}")
    assert tg_code in answer
    assert t("vi", "status.new") in answer
    # A tip on the Zalo OA, checked on Telegram with /status and on the bot with "tra cứu".
    oa_citizen = OACitizen(service, zalo_oa, "8100000000000000005")
    oa_code, oa_pin = await type_tip(oa_citizen, "Trộm xe đạp ở trường tiểu học")
    await chat.command("status", f"{oa_code} {oa_pin}")
    line = await telegram.wait_for(
        lambda c: (
            c.chat_id == tipster.id
            and oa_code in (c.text or "")
            and t("vi", "status.new") in (c.text or "")
        ),
        timeout=15,
    )
    assert t("vi", "status.new") in line.text
    typed = await on_zalo.say(f"tra cứu {oa_code.lower()} {oa_pin}")
    assert oa_code in typed and t("vi", "status.new") in typed
    # Typed without the slash on Telegram too.
    await chat.say(f"status {tg_code} {tg_pin}")
    await telegram.wait_for(
        lambda c: (
            c.chat_id == tipster.id
            and tg_code in (c.text or "")
            and t("vi", "status.new") in (c.text or "")
        ),
        timeout=15,
    )
    # A wrong PIN from another channel is refused like any other.
    wrong = await on_zalo.say(f"status {oa_code} 000000")
    assert t("vi", "status.wrong") in wrong


# ---------------------------------------------------------------------- anonymity


async def test_no_zalo_identity_in_the_database_or_the_logs(
    service, telegram, zalo_bot, zalo_oa, caplog
):
    from tests.test_anonymity import dump_everything

    caplog.set_level(logging.DEBUG)
    citizens: list[BotCitizen | OACitizen] = []
    for i in range(3):
        citizens.append(
            BotCitizen(service, zalo_bot, f"71234567890000{i:05d}", name=f"Lê Thị Kín{i:02d}")
        )
        citizens.append(OACitizen(service, zalo_oa, f"81234567890000{i:05d}"))
    officers = Officers(service, telegram)
    for i, citizen in enumerate(citizens):
        code, _ = await type_tip(citizen, f"Trộm xe máy trước chợ Long Xuyên, lần thứ {i}")
        if i < 2:  # the relay once each way, on each channel (before tips fold into digests)
            card = await card_in_group(telegram, LX.id, code)
            await officers.ask(card, f"Câu hỏi về {code}?")
            await got(citizen, f"Câu hỏi về {code}?")
            await citizen.say(f"Trả lời cho {code}")
            await officers.relayed(f"Trả lời cho {code}")
    dump = await dump_everything(service.session_factory)
    logs = caplog.text
    assert logs
    for citizen in citizens:
        needles = [citizen.user_id, f"app{citizen.user_id}"]
        if isinstance(citizen, BotCitizen):
            needles.append(citizen.user.display_name)
        for needle in needles:
            assert needle not in dump, f"{needle!r} is stored"
            assert needle not in logs, f"{needle!r} is logged"
    for call in telegram.calls:
        for citizen in citizens:
            assert citizen.user_id not in str(call.params)
