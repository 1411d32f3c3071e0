"""One bad update never wedges the bot, and every button press gets an answer.

The real python-telegram-bot Application polls the Bot API stand-in, which is fed updates that
the library cannot parse (issue 17).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bot.logs import RateLimitFilter
from handlers.i18n import t
from tests.e2e import running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

INTAKE_LOGGER = "bot.telegram_intake"


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path):
    async with running_service(service_settings(standin, db_url, tmp_path)) as running:
        yield running


@pytest.fixture
def intake_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger=INTAKE_LOGGER):
        yield caplog


def malformed_photo(factory: UpdateFactory, user) -> dict[str, Any]:
    """A private ``message`` whose photo lacks every required field."""
    update = factory.text(user, "ignored")
    del update["message"]["text"]
    update["message"]["photo"] = [{}]
    return update


async def until(predicate, seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - the state lives in the stand-in
            await asyncio.sleep(0.02)


def intake_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == INTAKE_LOGGER]


async def test_a_malformed_update_between_two_good_ones(standin, service, intake_log):
    factory = UpdateFactory(standin)
    telegram = service.telegram
    handled = telegram.updates_handled
    # Queued together, so that one getUpdates answers all three as one batch.
    first = standin.push_update(factory.command(factory.vi_user, "start"))
    bad = standin.push_raw_update(malformed_photo(factory, factory.vi_user))
    last = standin.push_update(factory.command(factory.en_user, "start"))
    await telegram.wait_handled(handled + 3)
    batches = [c.result for c in standin.calls_for("getUpdates", ok_only=True) if c.result]
    assert any([u["update_id"] for u in b] == [first, bad, last] for b in batches)

    vi = standin.texts_to(factory.vi_user.id)
    en = standin.texts_to(factory.en_user.id)
    assert vi and vi[0].startswith(t("vi", "greet.intro"))
    assert en and en[0].startswith(t("en", "greet.intro"))
    await until(lambda: not standin.pending_updates)  # the offset moved past all three

    lines = intake_lines(intake_log)
    assert len(lines) == 1
    assert str(bad) in lines[0] and "TypeError" in lines[0]
    assert str(factory.vi_user.id) not in lines[0] and "Lan" not in lines[0]
    assert telegram.metrics.malformed_updates == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_malformed_kinds_of_every_sort_are_skipped(standin, service, intake_log):
    factory = UpdateFactory(standin)
    telegram = service.telegram
    good = factory.callback(factory.vi_user, "sum:ok;drop")
    bodies: list[dict[str, Any]] = [
        {"message": 5},
        {"edited_message": []},
        {"callback_query": {"id": "x"}},
        {"callback_query": {**good["callback_query"], "message": {"chat": 5}}},
        {"message": {"message_id": 1, "date": "soon", "chat": {"id": 1, "type": "private"}}},
    ]
    handled = telegram.updates_handled
    for body in bodies:
        standin.push_raw_update(body)
    standin.push_update(factory.command(factory.vi_user, "start"))
    await telegram.wait_handled(handled + len(bodies) + 1)
    assert standin.texts_to(factory.vi_user.id)[0].startswith(t("vi", "greet.intro"))
    assert telegram.metrics.malformed_updates == len(bodies)
    assert len(intake_lines(intake_log)) == len(bodies)
    await until(lambda: not standin.pending_updates)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_thousand_malformed_updates_write_a_few_log_lines(standin, service, caplog):
    limiter = RateLimitFilter()
    caplog.handler.addFilter(limiter)
    try:
        with caplog.at_level(logging.WARNING, logger=INTAKE_LOGGER):
            telegram = service.telegram
            handled = telegram.updates_handled
            for _ in range(1000):
                standin.push_raw_update({"message": 5})
            await telegram.wait_handled(handled + 1000, timeout=60)
            lines = [r for r in caplog.records if r.name == INTAKE_LOGGER]
    finally:
        caplog.handler.removeFilter(limiter)
    assert telegram.metrics.malformed_updates == 1000
    assert 1 <= len(lines) <= 10
    assert limiter.suppressed_total >= 990
    assert sum(len(r.getMessage()) for r in lines) < 2000
    await until(lambda: not standin.pending_updates)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_polling_backs_off_on_repeated_errors(standin, service):
    telegram = service.telegram
    before = len(standin.calls_for("getUpdates"))
    standin.fail_next("getUpdates", count=50, error_code=500, description="Internal Server Error")
    # Wake the current long poll, so the failures start now.
    factory = UpdateFactory(standin)
    standin.push_update(factory.command(factory.vi_user, "start"))
    await asyncio.sleep(3)
    calls = len(standin.calls_for("getUpdates")) - before
    # Without backoff, 50 failures take milliseconds; with it, 1 s, 1.5 s, 2.25 s...
    assert calls <= 5, calls
    assert telegram.metrics.polling_errors >= 1


# ---------------------------------------------------------------- every press is answered


def answers_for(standin: BotAPIStandIn, update: dict[str, Any]) -> list[Any]:
    query_id = update["callback_query"]["id"]
    return [
        c
        for c in standin.calls_for("answerCallbackQuery")
        if c.params.get("callback_query_id") == query_id
    ]


async def press(standin, service, update: dict[str, Any]) -> list[Any]:
    handled = service.telegram.updates_handled
    standin.push_update(update)
    await service.telegram.wait_handled(handled + 1)
    return answers_for(standin, update)


async def test_a_forged_press_in_a_private_chat_is_answered(standin, service):
    factory = UpdateFactory(standin)
    answers = await press(standin, service, factory.callback(factory.vi_user, "\x00" * 64))
    assert len(answers) == 1


async def test_a_forged_press_by_a_stranger_in_a_group_is_answered(standin, service):
    factory = UpdateFactory(standin)
    stranger = factory.new_user(first_name="Lạ")
    for data in ("r:claim:999999", "nonsense", "q:", "w:x:y"):
        update = factory.callback(stranger, data, chat=factory.group)
        assert len(await press(standin, service, update)) == 1, data


async def test_a_press_on_an_expired_card_is_answered(standin, service):
    factory = UpdateFactory(standin)
    officer = factory.new_user(first_name="Cán bộ")
    # A card that no longer exists, and one too old for Telegram to show (date 0).
    stale = factory.callback(officer, "r:claim:424242", chat=factory.group)
    assert len(await press(standin, service, stale)) == 1
    old = factory.callback(officer, "r:claim:424242", chat=factory.group)
    message = old["callback_query"]["message"]
    old["callback_query"]["message"] = {"chat": message["chat"], "message_id": 1, "date": 0}
    assert len(await press(standin, service, old)) == 1
    private_old = factory.callback(factory.vi_user, "cat:theft")
    message = private_old["callback_query"]["message"]
    private_old["callback_query"]["message"] = {
        "chat": message["chat"],
        "message_id": 1,
        "date": 0,
    }
    assert len(await press(standin, service, private_old)) == 1


class _Exploding:
    """A dispatcher whose every call fails, as a database outage would make it."""

    async def process(self, *args: object) -> None:
        raise RuntimeError("boom")

    process_officer = process
    process_officer_message = process


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_press_is_answered_when_its_handler_raises(standin, service):
    factory = UpdateFactory(standin)
    service.telegram.dispatcher = _Exploding()
    private = factory.callback(factory.en_user, "cat:theft")
    answers = await press(standin, service, private)
    assert [a.params.get("text") for a in answers] == [t("en", "tg.press_failed")]
    group = factory.callback(factory.vi_user, "r:claim:1", chat=factory.group)
    answers = await press(standin, service, group)
    assert [a.params.get("text") for a in answers] == [t("vi", "tg.press_failed")]
    assert service.telegram.metrics.handler_errors == 2
    assert service.telegram.metrics.presses_answered_by_fallback == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_unreadable_getupdates_answer_never_spins(standin, service):
    """A result that is not a list of updates (a broken proxy) is an error to back off from;
    PTB alone would log it and ask again at once, hundreds of times a second."""
    telegram = service.telegram
    standin.set_handler("getUpdates", lambda call: {"not": "a list"})
    factory = UpdateFactory(standin)
    standin.push_update(factory.command(factory.vi_user, "start"))  # ends the current poll
    before = len(standin.calls_for("getUpdates"))
    await asyncio.sleep(3)
    assert len(standin.calls_for("getUpdates")) - before <= 5
    assert telegram.metrics.polling_errors >= 1
    standin.set_handler("getUpdates", None)
    standin.push_update(factory.command(factory.en_user, "start"))
    # Polling resumes after the backoff (at most 30 s).
    await standin.wait_for(lambda c: c.chat_id == factory.en_user.id, timeout=40)
