"""The Telegram channel, on python-telegram-bot.

Every update is turned into a plain domain event at the edge (:func:`to_event`) and every
:class:`~handlers.events.Outcome` is rendered back into Bot API calls (:class:`Renderer`).
Nothing past this module sees a ``telegram`` type.

Updates arrive by long polling, or by webhook on the service's own aiohttp server when
``TINBAO_WEBHOOK_URL`` is set. Updates of one chat are handled in order; different chats run
concurrently (:class:`PerChatUpdateProcessor`). An update that cannot be parsed is skipped
(:mod:`bot.telegram_intake`), and every button press is answered, even when its handler raises
(:class:`PressAnswer`). ``docs/telegram.md`` lists the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from telegram import (
    Bot,
    InlineKeyboardMarkup,
    Update,
)
from telegram import Message as TgMessage
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import Application, BaseUpdateProcessor, ContextTypes, TypeHandler

from bot.answers import maybe_delivered, patiently
from bot.dispatch import Dispatcher
from bot.http import AiohttpRequest
from bot.outage import DatabaseDown
from bot.queued_answers import SETTLE_SECONDS, AnswerQueue
from bot.spool import SpoolError, SpoolIntake
from bot.telegram_intake import ResilientBot, TelegramMetrics, UpdateIntake
from bot.telegram_markup import reply_markup as _markup
from bot.telegram_polling import ConfirmingPoller
from config.settings import Settings
from handlers.channels import CAPABILITIES, ChannelName
from handlers.events import (
    Attachment,
    ButtonPress,
    Event,
    GeoPoint,
    Message,
    Outcome,
    Reply,
    Sender,
    SharedContact,
)
from handlers.i18n import pick_locale, t
from handlers.render import render
from handlers.triage import CardRefresh, OfficerMessage, OfficerOutcome, OfficerPress

log = logging.getLogger(__name__)

CHANNEL = "telegram"
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
UNSUPPORTED_KINDS = ("sticker", "poll", "dice", "game", "story", "invoice", "paid_media")


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """Concurrent across chats, strictly ordered within a chat."""

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        key: object = None
        if isinstance(update, Update) and update.effective_chat is not None:
            key = update.effective_chat.id
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                await coroutine
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


def _command(message: TgMessage) -> tuple[str, str] | None:
    text = message.text or ""
    entities = message.entities or ()
    if not text.startswith("/") or not any(
        e.type == "bot_command" and e.offset == 0 for e in entities
    ):
        return None
    head, _, rest = text.partition(" ")
    name = head[1:].split("@", 1)[0]
    return name[:32], rest.strip()


def _attachments(message: TgMessage) -> tuple[Attachment, ...]:
    if message.photo:
        largest = message.photo[-1]
        return (Attachment("photo", largest.file_id, largest.file_size, "image/jpeg"),)
    if message.document:
        doc = message.document
        return (Attachment("document", doc.file_id, doc.file_size, doc.mime_type, doc.file_name),)
    for kind in ("video", "voice", "audio", "animation", "video_note"):
        item = getattr(message, kind, None)
        if item is not None:
            mime = getattr(item, "mime_type", None)
            return (Attachment(kind, item.file_id, item.file_size, mime),)
    return ()


def to_event(update: Update) -> Event | None:
    """A private-chat update as a domain event; ``None`` for anything the citizen flow skips."""
    if update.callback_query is not None:
        query = update.callback_query
        chat = query.message.chat if query.message is not None else None
        if chat is None or chat.type != ChatType.PRIVATE:
            return None
        sender = Sender(
            CHANNEL, str(query.from_user.id), str(chat.id), query.from_user.language_code
        )
        return ButtonPress(update.update_id, sender, query.data or "")
    message = update.message or update.edited_message
    if message is None or message.chat.type != ChatType.PRIVATE or message.from_user is None:
        return None
    user = message.from_user
    replied = message.reply_to_message
    sender = Sender(CHANNEL, str(user.id), str(message.chat.id), user.language_code)
    command = _command(message)
    location = None
    if message.location is not None:
        location = GeoPoint(message.location.latitude, message.location.longitude)
    contact = None
    if message.contact is not None:
        contact = SharedContact(
            phone=message.contact.phone_number,
            is_own=message.contact.user_id is not None and message.contact.user_id == user.id,
        )
    unsupported = next((k for k in UNSUPPORTED_KINDS if getattr(message, k, None)), None)
    return Message(
        update_id=update.update_id,
        sender=sender,
        text=message.text if message.text is not None else message.caption,
        command=command[0] if command else None,
        args=command[1] if command else "",
        location=location,
        attachments=_attachments(message),
        contact=contact,
        unsupported=unsupported,
        reply_to=str(replied.message_id) if replied is not None else None,
        edited=update.edited_message is not None and update.message is None,
        message_id=str(message.message_id),
    )


def to_officer_press(update: Update) -> OfficerPress | None:
    """A button press in a group (an officers' queue chat)."""
    query = update.callback_query
    if query is None or query.message is None:
        return None
    chat = query.message.chat
    if chat.type not in (ChatType.GROUP, ChatType.SUPERGROUP):
        return None
    message = query.message
    thread_id = getattr(message, "message_thread_id", None)
    if not getattr(message, "is_topic_message", False):
        thread_id = None
    return OfficerPress(
        update_id=update.update_id,
        channel=CHANNEL,
        chat_id=chat.id,
        thread_id=thread_id,
        message_id=message.message_id,
        user_id=query.from_user.id,
        user_name=query.from_user.full_name[:100],
        data=query.data or "",
    )


def to_officer_message(update: Update, bot_id: int) -> OfficerMessage | None:
    """A message in a group that reached the bot: a command, or a reply to the bot."""
    message = update.message
    if message is None or message.chat.type not in (ChatType.GROUP, ChatType.SUPERGROUP):
        return None
    user = message.from_user
    if user is None or user.is_bot:
        return None
    command = _command(message)
    if command is not None and "@" in (message.text or "").split(" ", 1)[0]:
        addressed = (message.text or "").split(" ", 1)[0].split("@", 1)[1]
        if message.get_bot().username and addressed.lower() != message.get_bot().username.lower():
            command = None  # another bot's command
    reply = message.reply_to_message
    reply_user = reply.from_user if reply is not None else None
    thread_id = message.message_thread_id if message.is_topic_message else None
    return OfficerMessage(
        update_id=update.update_id,
        channel=CHANNEL,
        chat_id=message.chat.id,
        thread_id=thread_id,
        message_id=message.message_id,
        user_id=user.id,
        user_name=user.full_name[:100],
        text=message.text if message.text is not None else message.caption,
        command=command[0] if command else None,
        args=command[1] if command else "",
        reply_to_message_id=reply.message_id if reply is not None else None,
        reply_to_user_id=reply_user.id if reply_user is not None else None,
        reply_to_user_name=reply_user.full_name[:100] if reply_user is not None else None,
        reply_to_is_bot=reply_user is not None and reply_user.id == bot_id,
        attachment=next(iter(_attachments(message)), None),
    )


class CardRefresher(Protocol):
    async def refresh(self, item: CardRefresh) -> None: ...

    async def edit_message(
        self, chat_id: int, message_id: int, text: str, buttons: list[list[dict[str, str]]]
    ) -> None: ...


class TelegramFetcher:
    """Downloads a file through the Bot API's ``getFile`` (at most 20 MB)."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def fetch(self, attachment: Attachment) -> bytes:
        file = await self.bot.get_file(attachment.file_ref)
        return bytes(await file.download_as_bytearray())


TEXT_LIMIT = 4096


def _has_markup(reply: Reply) -> bool:
    return bool(reply.buttons) or reply.keyboard is not None or reply.remove_keyboard


def merge_replies(replies: list[Reply]) -> list[Reply]:
    """Fold consecutive replies into as few messages as Telegram allows.

    A message carries one markup, so plain texts are joined onto the next reply that has one;
    trailing plain texts become one message. Nothing is merged past 4096 characters.
    """
    merged: list[Reply] = []
    pending: list[str] = []

    def flush_into(reply: Reply | None) -> None:
        texts = [*pending, reply.text] if reply is not None else list(pending)
        pending.clear()
        if not texts:
            return
        joined = "\n\n".join(texts)
        if len(joined) > TEXT_LIMIT:
            merged.extend(Reply(text=text) for text in texts[:-1])
            last = texts[-1]
        else:
            last = joined
        if reply is None:
            merged.append(Reply(text=last))
        else:
            merged.append(
                Reply(
                    text=last,
                    buttons=reply.buttons,
                    keyboard=reply.keyboard,
                    remove_keyboard=reply.remove_keyboard,
                )
            )

    for reply in replies:
        if _has_markup(reply):
            flush_into(reply)
        else:
            pending.append(reply.text)
    flush_into(None)
    return merged


def _pressed_label(update: Update) -> str | None:
    query = update.callback_query
    if query is None or query.message is None:
        return None
    markup = getattr(query.message, "reply_markup", None)
    for row in getattr(markup, "inline_keyboard", ()) or ():
        for button in row:
            if button.callback_data == query.data:
                # The echo adds its own tick: a label that already shows one keeps a single tick.
                return str(button.text).lstrip("✓ ")
    return None


class Renderer:
    """Sends an outcome with as few Bot API calls as possible.

    On a button press the pressed message is edited in place into the next prompt (with the
    chosen answer kept as its first line), instead of clearing its buttons and sending anew.
    """

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        #: Where an answer Telegram would not take waits, in order (set by the composition
        #: root; without it such an answer is only logged).
        self.queue: AnswerQueue | None = None

    async def send(self, sender: Sender, outcome: Outcome, update: Update | None = None) -> None:
        replies = merge_replies(render(outcome.replies, CAPABILITIES[ChannelName.TELEGRAM]))
        query = update.callback_query if update is not None else None
        if outcome.behind and self.queue is not None:
            # Earlier answers wait in the outbox: these go behind them, never before.
            if query is not None and outcome.clear_buttons and query.message is not None:
                await self._clear(query.message.chat.id, query.message.message_id)
            await self.queue.enqueue(sender, replies)
            return
        chat_id = sender.chat_id
        if query is not None and outcome.clear_buttons and query.message is not None:
            first = replies[0] if replies else None
            label = _pressed_label(update) if update is not None else None
            if first is not None and first.keyboard is None and not first.remove_keyboard:
                text = f"✓ {label}\n\n{first.text}" if label else first.text
                if len(text) > TEXT_LIMIT:
                    text = first.text
                markup = _markup(first)
                message = query.message
                try:
                    await patiently(
                        lambda: self.bot.edit_message_text(
                            chat_id=message.chat.id,
                            message_id=message.message_id,
                            text=text,
                            reply_markup=markup
                            if isinstance(markup, InlineKeyboardMarkup)
                            else None,
                        ),
                        idempotent=True,  # an edit done twice shows once
                    )
                    replies = replies[1:]
                except BadRequest:
                    await self._clear(query.message.chat.id, query.message.message_id)
                except TelegramError as exc:  # tried patiently: the prompt goes as a new message
                    log.warning("a pressed message was not edited (%s)", type(exc).__name__)
            else:
                await self._clear(query.message.chat.id, query.message.message_id)
        for index, reply in enumerate(replies):
            try:
                await patiently(
                    lambda reply=reply: self.bot.send_message(  # type: ignore[misc]
                        chat_id=int(chat_id), text=reply.text, reply_markup=_markup(reply)
                    )
                )
            except Forbidden:
                log.info("a citizen has blocked the bot; reply dropped")
                return
            except BadRequest as exc:  # refused as it is: sending it again cannot help
                log.warning("an answer to a citizen was refused (%s)", exc.message[:200])
                return
            except TelegramError as exc:  # tried patiently (bot.answers); state is committed
                await self._queue(sender, replies[index:], exc)
                return

    async def _queue(self, sender: Sender, replies: list[Reply], exc: TelegramError) -> None:
        """Still failing after the retries, or timed out (it may have been delivered): the rest
        of the answer waits in the outbox (bot.queued_answers), never dropped after one try."""
        if self.queue is None:
            log.warning("an answer to a citizen was not delivered (%s)", type(exc).__name__)
            return
        delay = SETTLE_SECONDS if maybe_delivered(exc) else 0.0
        if await self.queue.enqueue(sender, replies, delay=delay):
            log.warning("an answer to a citizen waits in the outbox (%s)", type(exc).__name__)

    async def _clear(self, chat_id: int, message_id: int) -> None:
        with contextlib.suppress(BadRequest):
            await self.bot.edit_message_reply_markup(
                chat_id=chat_id, message_id=message_id, reply_markup=None
            )


class PressAnswer:
    """The one ``answerCallbackQuery`` a button press gets.

    Handlers answer through :meth:`answer`; whatever happens in them, :meth:`ensure` (called
    from a ``finally``) answers a press that is still unanswered, so a button never spins on
    the person's phone: with a short "could not be handled" when the handler raised, else with
    an empty answer.
    """

    def __init__(self, update: Update, default_locale: str, metrics: TelegramMetrics) -> None:
        self.query = update.callback_query
        self.done = self.query is None
        self.default_locale = default_locale
        self.metrics = metrics

    @property
    def locale(self) -> str:
        user = self.query.from_user if self.query is not None else None
        return pick_locale(user.language_code if user else None, self.default_locale)

    async def answer(self, text: str | None = None, alert: bool = False) -> None:
        if self.done or self.query is None:
            return
        self.done = True
        try:
            await self.query.answer(text=text[:200] if text else None, show_alert=alert)
        except TelegramError as exc:  # too old, or Telegram unreachable: nothing more to do
            log.info("a button press could not be answered (%s)", type(exc).__name__)

    async def answer_outcome(self, outcome: Outcome | OfficerOutcome | None) -> None:
        await self.answer(
            outcome.notice if outcome is not None else None,
            bool(outcome is not None and outcome.alert),
        )

    async def expired(self) -> None:
        await self.answer(t(self.locale, "tg.press_expired"))

    async def ensure(self, failed: bool) -> None:
        if self.done:
            return
        self.metrics.presses_answered_by_fallback += 1
        await self.answer(t(self.locale, "tg.press_failed") if failed else None)


class TelegramChannel:
    """Owns the python-telegram-bot Application and its lifecycle."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        if settings.telegram_token is None:
            raise ValueError("TINBAO_TELEGRAM_TOKEN is not set")
        self.settings = settings
        self.dispatcher = dispatcher
        self.state = "starting"
        #: Counters shown by /healthz (malformed updates, polling errors...).
        self.metrics = TelegramMetrics()
        self.intake = UpdateIntake(self.metrics)
        bot = ResilientBot(
            settings.telegram_token.get_secret_value(),
            base_url=settings.telegram_api_url,
            base_file_url=settings.telegram_file_url,
            request=AiohttpRequest(),
            get_updates_request=AiohttpRequest(connection_pool_size=1, read_timeout=10.0),
            intake=self.intake,
        )
        builder = Application.builder().bot(bot).concurrent_updates(PerChatUpdateProcessor(64))
        # Polling is tinbao's own loop (bot.telegram_polling): the offset moves past an update
        # only once it is handled.
        builder = builder.updater(None)
        self.application = builder.build()
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self.renderer = Renderer(self.application.bot)
        self.fetcher = TelegramFetcher(self.application.bot)
        self._task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        #: Set once the bot is initialised and updates flow.
        self.ready = asyncio.Event()
        #: Re-renders posted cards after a state change (set by the composition root).
        self.cards: CardRefresher | None = None
        #: Registers a citizen's update as soon as the webhook has it (:mod:`bot.ordering`).
        self.arrivals: Callable[[Event], Awaitable[None]] | None = None
        #: Updates fully handled (replies sent); waiters are woken on each one.
        self.updates_handled = 0
        self._handled = asyncio.Condition()
        #: The spool webhook updates are written to (set by the composition root).
        self.spool: SpoolIntake | None = None
        self.poller = ConfirmingPoller(
            bot,
            self.process_update,
            timeout=settings.polling_timeout,
            allowed_updates=ALLOWED_UPDATES,
            on_error=self._on_polling_error,
        )

    @property
    def webhook_path(self) -> str:
        path = urlsplit(self.settings.webhook_url or "").path
        return path if path and path != "/" else "/telegram/webhook"

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self.process_update(update)

    async def process_update(self, update: Update) -> bool:
        """Handle one update; ``False`` when the database is down and it must come again."""
        await self.ready.wait()
        press = PressAnswer(update, self.settings.default_locale, self.metrics)
        failed = True
        handled = True
        try:
            await self._handle(update, press)
            failed = False
        except DatabaseDown:
            handled = failed = False
            await self._noted(update, press)
        except Exception as exc:  # never the update in the log: it carries the citizen's ids
            self.metrics.handler_errors += 1
            log.error("telegram handler error: %s", type(exc).__name__, exc_info=exc)
        finally:
            await press.ensure(failed)
            async with self._handled:
                self.updates_handled += 1
                self._handled.notify_all()
        return handled

    async def _noted(self, update: Update, press: PressAnswer) -> None:
        """During an outage: "noted, handled as soon as possible", once per citizen."""
        event = to_event(update)
        if event is None:
            if update.callback_query is not None:
                await press.answer(t(self.settings.officer_locale, "outage.noted"))
            return
        locale = pick_locale(event.sender.language_code, self.settings.default_locale)
        await press.answer(t(locale, "outage.noted"))
        watch = self.dispatcher.watch
        if watch is None or not watch.first_notice(CHANNEL, event.sender.chat_id):
            return
        try:
            await self.application.bot.send_message(
                chat_id=int(event.sender.chat_id), text=t(locale, "outage.noted")
            )
        except TelegramError as exc:
            log.info("the outage notice was not delivered (%s)", type(exc).__name__)

    async def _from_spool(self, data: dict[str, Any]) -> bool:
        update = self.intake.parse(data, self.application.bot)
        if update is None:
            return True
        return await self.process_update(update)

    def use_spool(self, spool: SpoolIntake) -> None:
        """Webhook updates go to ``spool`` before the 200, and are handled from it."""
        self.spool = spool
        spool.register(CHANNEL, self._from_spool, _raw_chat_key)

    async def wait_handled(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` updates in all have been handled (tests and benchmarks)."""
        async with asyncio.timeout(timeout), self._handled:
            await self._handled.wait_for(lambda: self.updates_handled >= count)

    async def _handle(self, update: Update, answer: PressAnswer) -> None:
        press = to_officer_press(update)
        if press is not None:
            await self._handle_officer(press, answer)
            return
        group_message = to_officer_message(update, self.application.bot.id)
        if group_message is not None:
            officer_outcome = await self.dispatcher.process_officer_message(
                group_message, self.fetcher
            )
            if officer_outcome is not None:
                await self._apply_officer_outcome(officer_outcome)
            return
        event = to_event(update)
        if event is None:
            if update.callback_query is not None:  # a press nobody can act on any more
                await answer.expired()
            return
        outcome = await self.dispatcher.process(event, self.fetcher)
        if isinstance(event, ButtonPress):
            await answer.answer_outcome(outcome)
        if outcome is not None:
            await self.renderer.send(event.sender, outcome, update)

    async def _handle_officer(self, press: OfficerPress, answer: PressAnswer) -> None:
        outcome = await self.dispatcher.process_officer(press)
        await answer.answer_outcome(outcome)
        if outcome is None:
            return
        if outcome.edit is not None and self.cards is not None:
            text, buttons = outcome.edit
            await self.cards.edit_message(press.chat_id, press.message_id, text, buttons)
        await self._apply_officer_outcome(outcome)

    async def _apply_officer_outcome(self, outcome: OfficerOutcome) -> None:
        if self.cards is None:
            return
        for item in outcome.refresh:
            await self.cards.refresh(item)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        # Never log the update: it carries the citizen's ids.
        error = context.error
        self.metrics.handler_errors += 1
        log.error("telegram handler error: %s", type(error).__name__, exc_info=error)

    def _on_polling_error(self, error: TelegramError) -> None:
        """PTB's retry loop backs off after this (1 s growing to 30 s); it must not raise."""
        self.metrics.polling_errors += 1
        log.warning("polling Telegram failed (%s); backing off", type(error).__name__)

    # ------------------------------------------------------------------ lifecycle

    def start_background(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telegram-channel")

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.start()
                return
            except (TelegramError, OSError) as exc:
                self.state = f"error: {type(exc).__name__}, retrying"
                log.warning(
                    "Telegram is not reachable (%s); retrying in %.0fs", type(exc).__name__, delay
                )
                with contextlib.suppress(Exception):
                    await self.application.shutdown()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def start(self) -> None:
        app = self.application
        await app.initialize()
        if self.settings.webhook_enabled:
            assert self.settings.webhook_secret is not None
            await app.bot.set_webhook(
                url=self.settings.webhook_url or "",
                secret_token=self.settings.webhook_secret.get_secret_value(),
                allowed_updates=ALLOWED_UPDATES,
            )
            await app.start()
            self.state = "webhook"
        else:
            await app.bot.delete_webhook()
            await app.start()
            self.state = "polling"
            self._poll_task = asyncio.create_task(self.poller.run(), name="telegram-polling")
        self.ready.set()
        log.info("Telegram channel running (%s)", self.state)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        app = self.application
        if app.running:
            await app.stop()
        await app.shutdown()
        self.state = "stopped"

    # ------------------------------------------------------------------ webhook

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """Check the secret header (constant time), reject what is not JSON with 400, then hand
        off. An update that cannot be parsed is logged, counted and answered 200, so Telegram
        does not deliver it again and again. Never a 500."""
        expected = (
            self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else ""
        )
        # aiohttp keeps undecodable header bytes as surrogates: they compare unequal, never raise.
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        given_bytes = given.encode("utf-8", "surrogateescape")
        if not expected or not hmac.compare_digest(given_bytes, expected.encode()):
            self.metrics.webhook_refused += 1
            return web.Response(status=403, text="forbidden")
        if not self.application.running:
            return web.Response(status=503, text="not ready")
        try:
            data = json.loads(await request.read())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            self.metrics.webhook_refused += 1
            return web.Response(status=400, text="bad update")
        update_id = data.get("update_id") if isinstance(data, dict) else None
        if isinstance(update_id, bool) or not isinstance(update_id, int):
            self.metrics.webhook_refused += 1
            return web.Response(status=400, text="bad update")
        if self.spool is not None:
            await self._arrived(data)
            try:  # written down (fsync'd) before the 200; handled from the spool
                await self.spool.submit(CHANNEL, data)
            except SpoolError:
                return web.Response(status=503, text="not stored")
            return web.Response(text="ok")
        update = self.intake.parse(data, self.application.bot)
        if update is not None:
            await self._arrived(data, update)
            await self.application.update_queue.put(update)
        return web.Response(text="ok")

    async def _arrived(self, data: dict[str, Any], update: Update | None = None) -> None:
        """Register the update's arrival before the 200, so that a later update of the same
        chat taken by another process waits for this one (bot.ordering). Best effort: the
        database may be down (the spool still keeps the update), and an update that cannot be
        read is counted once, where it is handled."""
        if self.arrivals is None:
            return
        if update is None:
            try:
                update = Update.de_json(data, self.application.bot)
            except Exception:
                return
        event = to_event(update) if update is not None else None
        if event is None:
            return
        try:
            await self.arrivals(event)
        except Exception as exc:
            log.warning("update arrival not registered (%s)", type(exc).__name__)


def _raw_chat_key(data: dict[str, Any]) -> str | None:
    """The chat of a raw update (for the spool's per-chat order)."""
    for kind in ("message", "edited_message"):
        message = data.get(kind)
        if isinstance(message, dict) and isinstance(message.get("chat"), dict):
            return str(message["chat"].get("id"))
    query = data.get("callback_query")
    if isinstance(query, dict):
        message = query.get("message")
        if isinstance(message, dict) and isinstance(message.get("chat"), dict):
            return str(message["chat"].get("id"))
        user = query.get("from")
        if isinstance(user, dict):
            return f"u{user.get('id')}"
    return None
