"""Throughput of complete tips through the real service, against a bare PTB echo bot.

``python -m bench.tip_flow [--tips N] [--backend sqlite|postgresql|both] [--concurrency C]``

For each backend the whole tinbao service (``tests.e2e.running_service``) long-polls the in-repo
Bot API stand-in over HTTP while N citizens (different users) each file one complete tip: /start,
menu, category, typed commune + pick, when, description, skip evidence, contact mode, confirm
(10 updates). C citizens are in flight at once; each one sends its next update only after the
bot's answer to the previous one arrived, as a person would. The answer is recognised in the
stand-in's recorded calls: the message the citizen needs next (the next buttons or question),
which is always the last one the bot sends for that update.

The same number of updates, in the same shape (3 text messages and 7 button presses per
citizen, same texts) and with the same concurrency, then goes to a bare python-telegram-bot
echo Application on the same stand-in (one ``sendMessage`` per message, one
``answerCallbackQuery`` per press, the same per-chat-ordered processor with 64 concurrent
updates as tinbao). The ratio tinbao / echo is what this measures; the target is >= 0.5.

``--processes 1 2 3`` runs the flat-out mode in webhook mode on PostgreSQL instead, with N web
processes and a worker behind one URL, for each N in turn, against a bare echo bot behind the
same URL (``bench/tip_flow_processes.py``).

``--rate R`` offers a fixed load instead (P4): ``--citizens`` people (60) type at a human pace,
each sending an update every ``citizens / R`` seconds, together R updates/s (30, Telegram's
global sending ceiling), and the answer latency p50 / p95 / p99 is printed, with the echo bot
under the same load.

Both modes first time confirmations to their cards (P6), with an idle queue: ``--cards``
citizens (20) fill a tip up to the summary together, then confirm one at a time, each after the
previous card was sent and 0.5 s more; from the push of the confirm press to the
``sendMessage`` of the card in its officers' group at the stand-in, p50 and p95. The timed tips
come from five communes in turn, each routed to its own group (the duty group and four unit
queues), so that each group gets one card in five and every card meets a rested group.
(Telegram allows 20 messages a minute into one group, so cards confirmed in a storm wait for
the group's allowance, folded into digests, by design: those are not P6.)

Throughput = updates pushed / wall time from the first push to the last answer. Each run checks
that every tip produced exactly one report with the tracking code the citizen was shown;
a failed check exits with status 1. Otherwise the exit status is 0 whatever the figures.
Below the human-readable table, every figure is printed again as one JSON object per line:
``{"bench", "backend", "metric", "value", "unit", "target"}``.

PostgreSQL: a temporary database is created on the server of ``TINBAO_BENCH_POSTGRES_URL``
(default ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``; the database named there is
only used to create and drop it), migrated, and dropped at the end. An unreachable server is
reported and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from telegram import Update
from telegram.ext import CallbackQueryHandler, ContextTypes, MessageHandler, filters

from bench.databases import DATABASES, Unavailable
from bench.report import figure, ms
from bot.logs import setup_logging
from bot.telegram import ALLOWED_UPDATES, PerChatUpdateProcessor
from handlers.citizen import DESCRIPTION_MAX, DESCRIPTION_MIN
from handlers.i18n import t
from storage.models import Report
from tests.e2e import running_service, service_settings
from tests.standin import ApiCall, BotAPIStandIn, UpdateFactory, User

TARGET_RATIO = 0.5
#: P4: answer latency p95 at Telegram's ceiling, ms. P6: confirm to card p95, ms.
TARGET_RATE_P95_MS = 50.0
TARGET_CONFIRM_TO_CARD_MS = 100.0
#: The duty group: every card of the run proper goes there (its tips' commune has no queue).
DUTY_CHAT_ID = -1009000000001
#: P6: tips confirmed one at a time with an idle queue (each after the previous card was sent)
#: before the run proper. A group's tips may spend 8 messages at once (of Telegram's 20 a
#: minute) and get ~8 more a minute; a group that has spent more than half of that burst is
#: being flooded, and holds its tips up to 3 s to fold them into digests (bot.delivery.folding),
#: by design: not P6. So the timed tips come from the communes of :data:`CARD_PLACES` in turn,
#: each routed to its own officers' group: each group gets one card in five, and every card
#: meets an idle queue and a rested group (one group alone could take ~5 cards in a row).
CARD_SAMPLES = 20
#: Seconds between a card and the next confirmation: the worker has settled the previous card.
CARD_GAP = 0.5
#: P6's communes: the query typed, the button picked, the unit code, and the officers' group
#: its queue posts to (``None``: no queue, the duty group).
CARD_PLACES: tuple[tuple[str, str, str, int | None], ...] = (
    ("long xuyen", "Phường Long Xuyên", "30307", None),
    ("binh duc", "Phường Bình Đức", "30292", -1009000000011),
    ("my thoi", "Phường Mỹ Thới", "30301", -1009000000012),
    ("chau doc", "Phường Châu Đốc", "30316", -1009000000013),
    ("vinh te", "Phường Vĩnh Tế", "30325", -1009000000014),
)
#: Every group a timed card may go to.
CARD_CHATS = frozenset(chat or DUTY_CHAT_ID for *_, chat in CARD_PLACES)
#: Seconds a citizen waits for one answer before the run is declared broken.
REPLY_TIMEOUT = 30.0
#: Long-poll timeout of both bots (as in the e2e tests).
POLLING_TIMEOUT = 10
#: tinbao's ``PerChatUpdateProcessor(64)``; the echo bot gets the same.
CONCURRENT_UPDATES = 64
LOCALE = "vi"
COMMUNE_QUERY = "long xuyen"
COMMUNE = "Phường Long Xuyên"
CODE_RE = re.compile(r"[2-9A-Z]{5}-[2-9A-Z]{5}")
ECHO_CALLBACK_DATA = "1:x"

Kind = Literal["command", "text", "press"]
Predicate = Callable[[ApiCall], bool]


class BenchFailure(Exception):
    """A correctness check failed: the figures of this run mean nothing."""


# ------------------------------------------------------------------------------ answers


def inline_labels(call: ApiCall) -> list[str]:
    markup = call.params.get("reply_markup")
    if not isinstance(markup, dict):
        return []
    rows = markup.get("inline_keyboard") or []
    return [str(button.get("text")) for row in rows for button in row]


#: What a citizen sees: a new message, or the pressed message edited into the next step.
SHOWN = ("sendMessage", "editMessageText")


def shows_button(label: str) -> Predicate:
    def check(call: ApiCall) -> bool:
        return call.method in SHOWN and call.ok and label in inline_labels(call)

    return check


def says(expected: str) -> Predicate:
    def check(call: ApiCall) -> bool:
        text = call.params.get("text")
        return (
            call.method in SHOWN and call.ok and isinstance(text, str) and text.endswith(expected)
        )

    return check


def either(*predicates: Predicate) -> Predicate:
    def check(call: ApiCall) -> bool:
        return any(predicate(call) for predicate in predicates)

    return check


def any_message(call: ApiCall) -> bool:
    return call.method == "sendMessage" and call.ok


def any_answer(call: ApiCall) -> bool:
    return call.method == "answerCallbackQuery" and call.ok


def shows_code(call: ApiCall) -> bool:
    return call.method in SHOWN and CODE_RE.search(call.text or "") is not None


def _any_call(call: ApiCall) -> bool:
    return True


class Answers:
    """Follows the stand-in's recorded calls and hands each one to whoever waits for it.

    One task reads the calls as they are recorded (the stand-in's own event-driven
    ``wait_for``); a waiter is keyed by chat id (messages) or callback query id (answers) and
    only sees calls recorded after it registered.
    """

    def __init__(self, standin: BotAPIStandIn) -> None:
        self.standin = standin
        self._cursor = len(standin.calls)
        self._waiters: dict[int | str, list[tuple[int, Predicate, asyncio.Future[ApiCall]]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="bench-answers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, key: int | str, predicate: Predicate) -> asyncio.Future[ApiCall]:
        future: asyncio.Future[ApiCall] = asyncio.get_running_loop().create_future()
        since = len(self.standin.calls)
        self._waiters.setdefault(key, []).append((since, predicate, future))
        return future

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await self.standin.wait_for(_any_call, timeout=3600.0, start=self._cursor)
            calls = self.standin.calls
            end = len(calls)
            for index in range(self._cursor, end):
                self._dispatch(index, calls[index])
            self._cursor = end

    def _dispatch(self, index: int, call: ApiCall) -> None:
        for key in (call.chat_id, call.params.get("callback_query_id")):
            if key is None:
                continue
            waiters = self._waiters.get(key)
            if not waiters:
                continue
            # One call may answer several waiters (the code and the menu come in one message).
            for since, predicate, future in list(waiters):
                if index >= since and not future.done() and predicate(call):
                    future.set_result(call)
                    waiters.remove((since, predicate, future))
            if not waiters:
                del self._waiters[key]


# ------------------------------------------------------------------------------ the tip


@dataclass(frozen=True)
class Step:
    kind: Kind
    #: The command's name, the text typed, or the label of the button pressed.
    value: str
    #: The last message tinbao sends for this update (what the citizen needs next).
    answer: Predicate


def tip_steps(
    description: str, locale: str = LOCALE, place: tuple[str, str] = (COMMUNE_QUERY, COMMUNE)
) -> list[Step]:
    """One complete tip, as ``tests.test_telegram.file_tip`` files it, from the commune
    ``place`` (the query typed, the button picked)."""
    query, commune = place
    menu = t(locale, "menu.tip")
    category = t(locale, "cat.theft")
    now = t(locale, "when.now")
    skip = t(locale, "ev.skip")
    relay = t(locale, "contact.relay", mark="✓ ")
    confirm = t(locale, "summary.confirm")
    return [
        Step("command", "start", shows_button(menu)),
        Step("press", menu, shows_button(category)),
        Step("press", category, says(t(locale, "place.ask"))),
        Step("text", query, shows_button(commune)),
        Step("press", commune, shows_button(now)),
        Step(
            "press",
            now,
            says(t(locale, "desc.ask", minimum=DESCRIPTION_MIN, limit=DESCRIPTION_MAX)),
        ),
        Step("text", description, shows_button(skip)),
        Step("press", skip, shows_button(relay)),
        Step("press", relay, shows_button(confirm)),
        # After the confirmation: the code and PIN, then the menu again.
        Step("press", confirm, shows_button(menu)),
    ]


def description_for(number: int) -> str:
    return f"Kẻ gian trộm xe máy trước chợ Long Xuyên lúc tối, lần thứ {number}"


def find_button(call: ApiCall | None, label: str) -> str:
    if call is None:
        raise BenchFailure(f"no message with buttons to press {label!r} on")
    for row in call.params["reply_markup"]["inline_keyboard"]:
        for button in row:
            if button["text"] == label:
                return str(button["callback_data"])
    raise BenchFailure(f"no button {label!r} in {inline_labels(call)}")


# ------------------------------------------------------------------------------ driving


@dataclass
class Run:
    """The updates of one run and when they were pushed and answered."""

    label: str
    updates: int = 0
    first_push: float = float("inf")
    last_answer: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: Tracking code → when its confirmation was pushed (``time.monotonic``, the stand-in's clock).
    confirmed_at: dict[str, float] = field(default_factory=dict)
    #: Seconds from each confirmation to its card's ``sendMessage``.
    to_card: list[float] = field(default_factory=list)
    #: CPU seconds of the benchmark's process (the bot, the stand-in and the citizens) while
    #: the citizens ran: less dependent on the machine's load than the latencies.
    cpu: float = 0.0
    #: tinbao's latencies by step of the tip (1: /start ... 10: the confirmation).
    by_step: dict[int, list[float]] = field(default_factory=dict)

    @property
    def cpu_per_update(self) -> float:
        return self.cpu / max(self.updates, 1)

    @property
    def seconds(self) -> float:
        return max(self.last_answer - self.first_push, 1e-9)

    @property
    def per_second(self) -> float:
        return self.updates / self.seconds

    def percentile(self, fraction: float, values: Sequence[float] | None = None) -> float:
        """The nearest-rank percentile: the smallest value with at least ``fraction`` of them
        at or below it (of 20 values, p95 is the 19th; until this round it was the 20th, the
        slowest, whatever the number of samples up to 20)."""
        ordered = sorted(self.latencies if values is None else values)
        if not ordered:
            return 0.0
        rank = math.ceil(round(fraction * len(ordered), 9))
        return ordered[min(len(ordered), max(rank, 1)) - 1]


class Driver:
    def __init__(self, standin: BotAPIStandIn, answers: Answers, factory: UpdateFactory) -> None:
        self.standin = standin
        self.answers = answers
        self.factory = factory
        #: Fixed-load mode: seconds between two updates of one citizen (0: flat out).
        self.interval = 0.0
        #: Fixed-load mode: when each citizen (by user id) sends their first update.
        self.starts: dict[int, float] = {}
        #: Seconds a citizen waits for one answer before the run is declared broken.
        self.reply_timeout = REPLY_TIMEOUT

    async def pace(self, user: User, number: int) -> None:
        """In fixed-load mode, wait for the moment this citizen's ``number``-th update is due."""
        if not self.interval:
            return
        due = self.starts.get(user.id, 0.0) + (number - 1) * self.interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

    async def exchange(
        self, run: Run, update: dict[str, Any], key: int | str, answer: Predicate, what: str
    ) -> ApiCall:
        """Push ``update`` and wait for the call that answers it."""
        future = self.answers.expect(key, answer)
        pushed = time.perf_counter()
        run.first_push = min(run.first_push, pushed)
        self.standin.push_update(update)
        try:
            call = await asyncio.wait_for(future, self.reply_timeout)
        except TimeoutError:
            mine = [
                c
                for c in self.standin.calls
                if key in (c.chat_id, c.params.get("callback_query_id"))
            ]
            recent = "\n  ".join(c.summary() for c in mine[-6:]) or "(none)"
            raise BenchFailure(
                f"{run.label}: no answer to {what} within {self.reply_timeout:.0f}s; "
                f"the last calls to this citizen:\n  {recent}"
            ) from None
        answered = time.perf_counter()
        run.last_answer = max(run.last_answer, answered)
        run.latencies.append(answered - pushed)
        run.updates += 1
        return call

    async def tinbao_citizen(
        self,
        run: Run,
        user: User,
        steps: Sequence[Step],
        before_confirm: Callable[[], Awaitable[object]] | None = None,
    ) -> str:
        """File one tip; returns the tracking code the citizen was shown. ``before_confirm`` is
        awaited just before the last step (the confirmation) is pushed."""
        keyboard: ApiCall | None = None
        code_future: asyncio.Future[ApiCall] | None = None
        failed = says(t(LOCALE, "err.internal"))
        for number, step in enumerate(steps, 1):
            if step.kind == "command":
                update = self.factory.command(user, step.value)
            elif step.kind == "text":
                update = self.factory.text(user, step.value)
            else:
                data = find_button(keyboard, step.value)
                message = keyboard.result if keyboard is not None else None
                update = self.factory.callback(user, data, message=message)
            if number == len(steps):
                if before_confirm is not None:
                    await before_confirm()
                code_future = self.answers.expect(user.id, shows_code)
            what = f"step {number} ({step.kind} {step.value!r})"
            await self.pace(user, number)
            pushed_at = time.monotonic()
            call = await self.exchange(run, update, user.id, either(step.answer, failed), what)
            run.by_step.setdefault(number, []).append(run.latencies[-1])
            if failed(call):
                raise BenchFailure(f"{run.label}: tinbao answered {what} with {call.text!r}")
            if inline_labels(call):
                keyboard = call
        assert code_future is not None
        if not code_future.done():
            raise BenchFailure(f"{run.label}: the confirmation showed no tracking code")
        match = CODE_RE.search(code_future.result().text or "")
        assert match is not None
        run.confirmed_at[match.group(0)] = pushed_at
        return match.group(0).replace("-", "")

    async def echo_citizen(self, run: Run, user: User, steps: Sequence[Step]) -> None:
        """The same updates to the echo bot: a message is answered by a message, a press by
        ``answerCallbackQuery``."""
        last: ApiCall | None = None
        for number, step in enumerate(steps, 1):
            what = f"step {number} ({step.kind})"
            await self.pace(user, number)
            if step.kind == "press":
                message = last.result if last is not None else None
                update = self.factory.callback(user, ECHO_CALLBACK_DATA, message=message)
                query_id = update["callback_query"]["id"]
                await self.exchange(run, update, query_id, any_answer, what)
                continue
            if step.kind == "command":
                update = self.factory.command(user, step.value)
            else:
                update = self.factory.text(user, step.value)
            last = await self.exchange(run, update, user.id, any_message, what)


async def drive(
    users: Sequence[User],
    concurrency: int,
    citizen: Callable[[User], Awaitable[Any]],
) -> list[Any]:
    """Run ``citizen(user)`` for every user, ``concurrency`` of them at a time."""
    results: list[Any] = [None] * len(users)
    pending = iter(enumerate(users))

    async def worker() -> None:
        for index, user in pending:
            results[index] = await citizen(user)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(users))):
                group.create_task(worker())
    except* BenchFailure as failures:
        first = failures.exceptions[0]
        others = len(failures.exceptions) - 1
        raise BenchFailure(
            f"{first}" + (f"\n({others} more citizens failed)" if others else "")
        ) from None
    return results


def check_calls(standin: BotAPIStandIn, start: int, label: str) -> None:
    failed = [c for c in standin.calls[start:] if not c.ok and c.method != "getUpdates"]
    if failed:
        shown = "\n  ".join(c.summary() for c in failed[:10])
        raise BenchFailure(f"{label}: {len(failed)} Bot API calls failed:\n  {shown}")


# ------------------------------------------------------------------------------ the two bots


async def bench_tinbao(
    driver: Driver,
    db_url: str,
    data_dir: Path,
    tips: int,
    concurrency: int,
    label: str,
    cards: int = CARD_SAMPLES,
) -> Run:
    """``cards`` tips timed to their cards first (P6), then the run proper (``tips``)."""
    standin = driver.standin
    run = Run(label)
    users = new_users(driver.factory, tips)
    steps_of = {
        user.id: tip_steps(description_for(number)) for number, user in enumerate(users, 1)
    }
    start = len(standin.calls)
    settings = service_settings(
        standin, db_url, data_dir, duty_chat_id=DUTY_CHAT_ID, queues_file=card_queues(data_dir)
    )
    async with running_service(settings) as service:
        timed, card_codes = await time_cards(driver, cards, label)
        run.to_card = timed.to_card
        driver.starts = schedule(users, driver.interval)
        cpu = time.process_time()
        codes = await drive(
            users,
            concurrency,
            lambda user: driver.tinbao_citizen(run, user, steps_of[user.id]),
        )
        run.cpu = time.process_time() - cpu
        async with service.session_factory() as session:
            stored = list(await session.scalars(select(Report.code)))
    check_calls(standin, start, label)
    codes += card_codes
    if len(stored) != len(codes):
        raise BenchFailure(f"{label}: {len(codes)} tips filed but {len(stored)} reports stored")
    if sorted(stored) != sorted(codes):
        raise BenchFailure(f"{label}: the stored reports are not the codes citizens were shown")
    if len(set(codes)) != len(codes):
        raise BenchFailure(f"{label}: tracking codes are not unique")
    if run.updates != tips * len(next(iter(steps_of.values()))):
        raise BenchFailure(f"{label}: {run.updates} updates answered")
    await wait_confirmed(standin, label)
    return run


async def _echo_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is not None:
        await context.bot.send_message(chat_id=message.chat_id, text=message.text or "?")


async def _echo_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if update.callback_query is not None:
        await update.callback_query.answer()


@asynccontextmanager
async def running_echo(standin: BotAPIStandIn) -> AsyncIterator[None]:
    application = (
        standin.application_builder()
        .concurrent_updates(PerChatUpdateProcessor(CONCURRENT_UPDATES))
        .get_updates_read_timeout(POLLING_TIMEOUT + 10)
        .build()
    )
    application.add_handler(MessageHandler(filters.TEXT, _echo_message))
    application.add_handler(CallbackQueryHandler(_echo_press))
    await application.initialize()
    try:
        await application.bot.delete_webhook()
        await application.start()
        await application.updater.start_polling(
            timeout=POLLING_TIMEOUT, allowed_updates=ALLOWED_UPDATES
        )
        yield
    finally:
        if application.updater.running:
            await application.updater.stop()
        if application.running:
            await application.stop()
        await application.shutdown()


async def bench_echo(driver: Driver, tips: int, concurrency: int, label: str) -> Run:
    standin = driver.standin
    run = Run(label)
    users = new_users(driver.factory, tips)
    steps_of = {
        user.id: tip_steps(description_for(number)) for number, user in enumerate(users, 1)
    }
    start = len(standin.calls)
    async with running_echo(standin):
        driver.starts = schedule(users, driver.interval)
        cpu = time.process_time()
        await drive(
            users, concurrency, lambda user: driver.echo_citizen(run, user, steps_of[user.id])
        )
        run.cpu = time.process_time() - cpu
    check_calls(standin, start, label)
    await wait_confirmed(standin, label)
    return run


def schedule(users: Sequence[User], interval: float) -> dict[int, float]:
    """Fixed-load mode: the citizens' first updates, spread evenly over one interval."""
    if not interval:
        return {}
    now = time.perf_counter()
    step = interval / max(len(users), 1)
    return {user.id: now + index * step for index, user in enumerate(users)}


def card_queues(directory: Path) -> Path:
    """Writes the queue file of P6's groups (:data:`CARD_PLACES`) in ``directory``."""
    path = directory / "bench-queues.toml"
    entries = [
        f'[[queue]]\nkey = "bench-{unit}"\nchat_id = {chat}\nunits = ["{unit}"]\n'
        for _query, _label, unit, chat in CARD_PLACES
        if chat is not None
    ]
    path.write_text("\n".join(entries), encoding="utf-8")
    return path


async def time_cards(driver: Driver, samples: int, label: str) -> tuple[Run, list[str]]:
    """P6: the time from a confirmation to its card's ``sendMessage`` in its officers' group,
    with an idle queue. ``samples`` citizens fill their tips up to the summary together, then
    confirm one at a time: each confirmation waits until the previous card was sent and
    ``CARD_GAP`` more, so every card meets an idle queue; the tips come from the communes of
    :data:`CARD_PLACES` in turn, so every card meets a rested group (the service must run
    with :func:`card_queues`). Returns the run (its ``to_card``) and the codes shown, for the
    correctness checks."""
    standin = driver.standin
    run = Run(f"{label} cards")
    users = new_users(driver.factory, samples)
    turn = asyncio.Lock()
    start = len(standin.calls)

    async def citizen(number: int, user: User) -> str:
        query, commune, *_ = CARD_PLACES[number % len(CARD_PLACES)]
        steps = tip_steps(description_for(10_000 + number), place=(query, commune))
        code = await driver.tinbao_citizen(run, user, steps, before_confirm=turn.acquire)
        try:
            shown = f"{code[:5]}-{code[5:]}"
            sent = await card_sent(standin, shown, label, start)
            run.to_card.append(sent - run.confirmed_at[shown])
            await asyncio.sleep(CARD_GAP)
        finally:
            turn.release()
        return code

    numbered = dict(zip((u.id for u in users), range(len(users)), strict=True))
    codes = await drive(users, samples, lambda user: citizen(numbered[user.id], user))
    return run, codes


async def card_sent(standin: BotAPIStandIn, code: str, label: str, start: int) -> float:
    """When the card of ``code`` was sent to its group (the stand-in's clock)."""

    def is_card(call: ApiCall) -> bool:
        return (
            call.method == "sendMessage"
            and call.ok
            and call.chat_id in CARD_CHATS
            and code in (call.text or "")
        )

    try:
        call = await standin.wait_for(is_card, timeout=REPLY_TIMEOUT, start=start)
    except TimeoutError:
        raise BenchFailure(f"{label}: the card of {code} never reached its group") from None
    return call.at


def new_users(factory: UpdateFactory, count: int) -> list[User]:
    return [factory.new_user(first_name=f"Dân {i}", language_code=LOCALE) for i in range(count)]


async def wait_confirmed(standin: BotAPIStandIn, label: str) -> None:
    """Every pushed update must have been taken (so the next bot does not see it again)."""
    if standin.pending_updates:
        raise BenchFailure(
            f"{label}: {len(standin.pending_updates)} updates left unconfirmed at shutdown"
        )


# ------------------------------------------------------------------------------ report


@dataclass
class Row:
    backend: str
    tips: int
    tinbao: Run
    echo: Run

    @property
    def ratio(self) -> float:
        return self.tinbao.per_second / self.echo.per_second


def print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'backend':<11}{'tips':>6}{'updates':>9}{'seconds':>9}"
        f"{'tinbao upd/s':>14}{'echo upd/s':>12}{'ratio':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        verdict = "PASS" if row.ratio >= TARGET_RATIO else "BELOW TARGET"
        print(
            f"{row.backend:<11}{row.tips:>6}{row.tinbao.updates:>9}{row.tinbao.seconds:>9.2f}"
            f"{row.tinbao.per_second:>14.1f}{row.echo.per_second:>12.1f}{row.ratio:>7.2f}"
            f"  {verdict} (target >= {TARGET_RATIO})"
        )
    print()
    print_latencies(rows)


def print_latencies(rows: Sequence[Row]) -> None:
    print("answer latency per update, ms (p50 / p95 / p99 / max), and CPU ms per update:")
    for row in rows:
        for run in (row.tinbao, row.echo):
            print(
                f"  {run.label:<20}{ms(run.percentile(0.5)):>7.1f} /"
                f"{ms(run.percentile(0.95)):>7.1f} /{ms(run.percentile(0.99)):>7.1f} /"
                f"{ms(max(run.latencies)):>7.1f}   cpu {run.cpu_per_update * 1000:.2f}"
            )
    print()
    print(
        f"confirm to card in its group, ms (p50 / p95 / max; target p95 <= "
        f"{TARGET_CONFIRM_TO_CARD_MS:.0f}):"
    )
    for row in rows:
        cards = row.tinbao.to_card
        print(
            f"  {row.tinbao.label:<20}{ms(row.tinbao.percentile(0.5, cards)):>7.1f} /"
            f"{ms(row.tinbao.percentile(0.95, cards)):>7.1f} /{ms(max(cards, default=0)):>7.1f}"
            f"   ({len(cards)} cards, in order: {' '.join(f'{ms(c):.0f}' for c in cards)})"
        )


def figures(rows: Sequence[Row], rate: float | None) -> list[str]:
    """The figures as JSON lines, under the metric names of issue 14."""
    lines: list[str] = []
    bench = "tip_flow"
    for row in rows:
        b = row.backend
        card_p95 = ms(row.tinbao.percentile(0.95, row.tinbao.to_card))
        if rate is None:
            lines += [
                figure(b, "ratio", row.ratio, "", TARGET_RATIO, bench),
                figure(b, "tinbao_ups", row.tinbao.per_second, "updates/s", None, bench),
                figure(b, "echo_ups", row.echo.per_second, "updates/s", None, bench),
            ]
        else:
            lines += [
                figure(b, "p50_ms", ms(row.tinbao.percentile(0.5)), "ms", None, bench),
                figure(
                    b, "p95_ms", ms(row.tinbao.percentile(0.95)), "ms", TARGET_RATE_P95_MS, bench
                ),
                figure(b, "p99_ms", ms(row.tinbao.percentile(0.99)), "ms", None, bench),
                figure(b, "echo_p95_ms", ms(row.echo.percentile(0.95)), "ms", None, bench),
            ]
        lines += [
            figure(b, "confirm_to_card_p95_ms", card_p95, "ms", TARGET_CONFIRM_TO_CARD_MS, bench),
            figure(b, "cpu_ms_per_update", row.tinbao.cpu_per_update * 1000, "ms", None, bench),
            figure(b, "echo_cpu_ms_per_update", row.echo.cpu_per_update * 1000, "ms", None, bench),
        ]
    return lines


# ------------------------------------------------------------------------------ main


async def main_async(
    tips: int,
    backends: Sequence[str],
    concurrency: int,
    rate: float | None = None,
    cards: int = CARD_SAMPLES,
) -> int:
    rows: list[Row] = []
    if rate is None:
        print(f"{tips} tips of {len(tip_steps(''))} updates each, {concurrency} citizens at once")
    else:
        print(
            f"{tips} citizens typing at a human pace, {rate:g} updates/s in all "
            f"(one update per citizen every {tips / rate:.1f} s)"
        )
        concurrency = tips
    async with BotAPIStandIn() as standin:
        answers = Answers(standin)
        answers.start()
        driver = Driver(standin, answers, UpdateFactory(standin))
        driver.interval = tips / rate if rate else 0.0
        try:
            for backend in backends:
                try:
                    async with DATABASES[backend]() as (db_url, data_dir):
                        tinbao = await bench_tinbao(
                            driver, db_url, data_dir, tips, concurrency, f"tinbao/{backend}", cards
                        )
                        echo = await bench_echo(driver, tips, concurrency, f"echo/{backend}")
                except Unavailable as exc:
                    print(f"{backend}: SKIPPED: {exc}", flush=True)
                    continue
                rows.append(Row(backend, tips, tinbao, echo))
        except BenchFailure as exc:
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            await answers.stop()
    if rows:
        print()
        if rate is None:
            print_table(rows)
        else:
            print_rate_table(rows, rate)
        print()
        for line in figures(rows, rate):
            print(line)
    return 0


def print_steps(run: Run) -> None:
    """p50 / p95 by step of the tip: which steps the tail is made of."""
    steps = "  ".join(
        f"{number}: {ms(run.percentile(0.5, values)):.0f}/{ms(run.percentile(0.95, values)):.0f}"
        for number, values in sorted(run.by_step.items())
    )
    print(f"  {run.label} by step, ms p50/p95 (10 = confirmation): {steps}")


def print_rate_table(rows: Sequence[Row], rate: float) -> None:
    print(
        f"fixed load of {rate:g} updates/s: answer latency, target p95 <= "
        f"{TARGET_RATE_P95_MS:.0f} ms"
    )
    for row in rows:
        p95 = ms(row.tinbao.percentile(0.95))
        verdict = "PASS" if p95 <= TARGET_RATE_P95_MS else "ABOVE TARGET"
        print(
            f"  {row.backend:<11} tinbao p95 {p95:.1f} ms, echo p95 "
            f"{ms(row.echo.percentile(0.95)):.1f} ms: {verdict}"
        )
    print()
    print_latencies(rows)
    for row in rows:
        print_steps(row.tinbao)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tip_flow", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument(
        "--tips", type=int, default=None, help="citizens, one tip each (50; 60 with --rate)"
    )
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="both", help="(both)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=10, help="citizens in flight at once (10)"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="offer a fixed load of this many updates/s (P4)"
    )
    parser.add_argument(
        "--cards",
        type=int,
        default=CARD_SAMPLES,
        help=f"tips timed to their cards with an idle queue, one at a time (P6, {CARD_SAMPLES})",
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        metavar="N",
        default=None,
        help="webhook mode on PostgreSQL with N web processes (and --workers) behind one URL, "
        "each N in turn: --processes 1 2 3 (bench/tip_flow_processes.py)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes with --processes (1)"
    )
    args = parser.parse_args(argv)
    if args.processes is not None:
        if args.rate is not None:
            parser.error("--processes measures flat out; it does not take --rate")
        if args.backend == "sqlite":
            parser.error("--processes needs PostgreSQL (several processes share one database)")
        if any(n < 1 for n in args.processes) or args.workers < 1:
            parser.error("--processes and --workers must be at least 1")
    if args.tips is None:
        args.tips = 60 if args.rate else 50
    if args.tips < 1 or args.concurrency < 1 or args.cards < 1:
        parser.error("--tips, --concurrency and --cards must be at least 1")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("WARNING")
    if args.processes is not None:
        from bench import tip_flow_processes

        return tip_flow_processes.run(args.processes, args.tips, args.concurrency, args.workers)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    return asyncio.run(main_async(args.tips, backends, args.concurrency, args.rate, args.cards))


if __name__ == "__main__":
    raise SystemExit(main())
