"""The status check: tracking code, then PIN (rate-limited per code and per sender)."""

from __future__ import annotations

import asyncio
from functools import cache

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import localtime
from handlers.citizen.base import (
    RATE_PIN_CODE,
    RATE_PIN_SENDER,
    Prepared,
    State,
    Turn,
)
from handlers.citizen.core import FlowCore, Step
from handlers.domain import LOCALES
from handlers.events import Message
from handlers.i18n import t
from handlers.places import fold
from handlers.rewards import Rewards, RewardSettings, format_claim_code, format_vnd
from handlers.security import format_code, parse_code, parse_pin
from handlers.text import clean_text
from storage.models import Report
from storage.repositories import RateLimits, Reports


@cache
def _status_words() -> frozenset[str]:
    found: set[str] = set()
    for locale in LOCALES:
        found.update(fold(word) for word in t(locale, "zalo.words.status").split("|"))
    return frozenset(word for word in found if word)


def typed_status(text: str | None) -> str | None:
    """The code (and PIN) of ``status CODE PIN`` typed without the slash, as Zalo users do
    (``tra cứu CODE PIN`` too); ``None`` unless a tracking code follows the word."""
    tokens = clean_text(text or "")[:120].split()
    for size in (1, 2):
        if len(tokens) <= size or fold(" ".join(tokens[:size])) not in _status_words():
            continue
        rest = tokens[size:]
        if parse_code("".join(rest)) or (len(rest) >= 2 and parse_code("".join(rest[:-1]))):
            return " ".join(rest)
    return None


async def start_status(flow: FlowCore, turn: Turn, args: str, *, asked: bool = False) -> None:
    if turn.state not in (State.STATUS_CODE, State.STATUS_PIN):
        flow.side_trip(turn)
    parts = clean_text(args)[:80].split()
    code = parse_code("".join(parts[:-1])) if len(parts) >= 2 else None
    if code is not None and parse_pin(parts[-1]) is not None:
        await check_status(flow, turn, code, parse_pin(parts[-1]) or "")
        return
    code = parse_code("".join(parts)) if parts else None
    if code is None:
        if asked or parts:
            turn.say("status.bad_code")
        turn.state = State.STATUS_CODE
    else:
        turn.data["status_code"] = code
        turn.state = State.STATUS_PIN
    flow.prompt(turn)


async def check_status(flow: FlowCore, turn: Turn, code: str, pin: str) -> None:
    report = await verify_pin(flow, turn, code, pin)
    turn.data.pop("status_code", None)
    if report is None:
        await flow.resume(turn)
        return
    values = {
        "code": format_code(report.code),
        "status": t(turn.locale, f"status.{report.status}"),
        "received": localtime.format_datetime(report.created_at),
    }
    reply = turn.say("status.line", **values)
    if report.status == "resolved" and report.outcome:
        reply.text += "\n" + t(turn.locale, f"outcome.citizen.{report.outcome}")
    await show_reward(flow, turn, report)
    await flow.resume(turn)


async def show_reward(flow: FlowCore, turn: Turn, report: Report) -> None:
    """The reward, for whoever proved the PIN: an approved one gets a fresh claim code."""
    said = await reward_notice(flow, turn.session, report, turn.locale)
    if said is not None:
        turn.say(said[0], **said[1])


async def reward_notice(
    flow: FlowCore, session: AsyncSession, report: Report, locale: str
) -> tuple[str, dict[str, str]] | None:
    """The catalogue key and values of the reward line (any channel), or ``None``."""
    rewards = Rewards(session, keyring=flow.keyring, settings=RewardSettings())
    reward = await rewards.active_for(report.id)
    if reward is None or reward.status not in ("approved", "paid"):
        return None
    amount = format_vnd(reward.amount_vnd)
    if reward.status == "paid":
        return "reward.citizen.paid", {"amount": amount}
    claim = await rewards.issue_claim_code(reward)
    instructions = flow.instructions.for_unit(report.unit_code) or t(
        locale, "reward.citizen.default_instructions"
    )
    return "reward.citizen.approved", {
        "code": format_code(report.code),
        "amount": amount,
        "claim": format_claim_code(claim),
        "instructions": instructions,
    }


async def dummy_hash(flow: FlowCore) -> str:
    if flow._dummy_pin_hash is None:
        pins = flow.pins
        flow._dummy_pin_hash = (
            await asyncio.to_thread(pins.hash, "000000") if pins.slow else pins.hash("000000")
        )
    return flow._dummy_pin_hash


async def verify_pin(flow: FlowCore, turn: Turn, code: str, pin: str) -> Report | None:
    """The report for ``code`` if ``pin`` is right; rate-limited per code and per sender."""
    report, refusal = await pin_report(flow, turn.session, turn.sender_key, code, pin)
    if refusal == "status.locked":
        turn.say(refusal, minutes=int(flow.settings.pin_attempt_window.total_seconds() // 60))
    elif refusal is not None:
        turn.say(refusal)
    return report


async def pin_report(
    flow: FlowCore, session: AsyncSession, sender_key: str, code: str, pin: str
) -> tuple[Report | None, str | None]:
    """The report for ``code`` if ``pin`` is right, else the catalogue key of why not.

    One lockout for every channel: attempts count per sender key and per code.
    """
    limits = RateLimits(session)
    settings = flow.settings
    window = settings.pin_attempt_window
    code_key = flow.keyring.keyed_hash("code", code)
    if (
        await limits.count(RATE_PIN_SENDER, sender_key, window) >= settings.pin_attempts_per_sender
        or await limits.count(RATE_PIN_CODE, code_key, window) >= settings.pin_attempts_per_code
    ):
        return None, "status.locked"
    report = await Reports(session).by_code(code)
    pin_hash = report.pin_hash if report is not None else await dummy_hash(flow)
    if flow.pins.is_slow_hash(pin_hash):  # an argon2 hash of an older report
        valid = await asyncio.to_thread(flow.pins.verify, pin_hash, pin)
    else:
        valid = flow.pins.verify(pin_hash, pin)
    if report is None or not valid:
        limits.hit(RATE_PIN_SENDER, sender_key)
        limits.hit(RATE_PIN_CODE, code_key)
        return None, "status.wrong"
    return report, None


def read_pin(
    flow: FlowCore, turn: Turn, message: Message, code_key: str
) -> tuple[str, str] | None:
    """The code remembered under ``code_key`` and the PIN typed; else say why, ask again."""
    if flow.wrong_type(turn, message, expects="text"):
        flow.prompt(turn)
        return None
    pin = parse_pin(clean_text(message.text or "")[:40])
    code = turn.data.get(code_key)
    if pin is None or not isinstance(code, str):
        turn.say("status.bad_pin")
        flow.prompt(turn)
        return None
    return code, pin


class StatusCode(Step):
    state = State.STATUS_CODE
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("status.ask_code").buttons = [[turn.button("common.cancel", "x")]]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if flow.wrong_type(turn, message, expects="text"):
            flow.prompt(turn)
            return
        text = clean_text(message.text or "")
        if await flow.typed_choice(turn, text, fuzzy=False):
            return
        await start_status(flow, turn, text, asked=True)


class StatusPin(Step):
    state = State.STATUS_PIN
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("status.ask_pin").buttons = [[turn.button("common.cancel", "x")]]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        text = clean_text(message.text or "")
        if (text == "0" or not text.isdigit()) and await flow.typed_choice(
            turn, text, fuzzy=False
        ):
            return
        entered = read_pin(flow, turn, message, "status_code")
        if entered is not None:
            await check_status(flow, turn, *entered)


STEPS: tuple[Step, ...] = (StatusCode(), StatusPin())
