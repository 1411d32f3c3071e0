"""What both Zalo channels share: intake through the spool, redelivery keys, the dispatcher,
and the replies (plain text, and an officer's photo).

An update is written to the spool first (:mod:`bot.spool`, fsync'd; the composition root sets
it with :meth:`ZaloAdapter.use_spool`), which is its one durable store and its one way in: the
spool hands it back, updates of one chat in order and different chats concurrently, and replays
what is left after a crash or while the database was down. The
:class:`~bot.zalo.inbox.Inbox` only recognises a message id Zalo delivers twice (claim, done,
and a purge of old keys). The update becomes a neutral :class:`~handlers.events.Message` (the
Zalo user id only reaches the flow, which keeps its keyed hash and encrypts the route back); the
:class:`~handlers.events.Outcome` is rendered as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from bot.answers import patiently
from bot.channel import SendError
from bot.dispatch import Dispatcher
from bot.outage import DatabaseDown
from bot.queued_answers import AnswerQueue
from bot.spool import SpoolIntake
from bot.zalo.inbox import Inbox
from bot.zalo.text import render_messages, render_texts
from handlers.channels import CAPABILITIES, Capabilities, ChannelName
from handlers.citizen import MediaFetcher
from handlers.events import Message, Reply
from handlers.i18n import pick_locale, t

log = logging.getLogger(__name__)

#: How often handled message ids older than a week are forgotten.
PURGE_INTERVAL = 6 * 3600.0


class ZaloAdapter(ABC):
    """The shared half of a Zalo channel; a subclass parses updates and sends text."""

    channel_name: ChannelName

    def __init__(self, dispatcher: Dispatcher, inbox: Inbox, fetcher: MediaFetcher) -> None:
        self.dispatcher = dispatcher
        self.inbox = inbox
        self.fetcher = fetcher
        self._state = "starting"
        self._purger: asyncio.Task[None] | None = None
        #: Updates fully handled (replies sent); waiters are woken on each one (tests).
        self.updates_handled = 0
        self._handled = asyncio.Condition()
        #: The spool updates are written to first (set by the composition root).
        self.spool: SpoolIntake | None = None
        #: Where an answer Zalo would not take waits, in order (set by the composition root).
        self.answers: AnswerQueue | None = None

    def use_spool(self, spool: SpoolIntake) -> None:
        """Updates go to ``spool`` first (fsync'd), and are handled from it."""
        self.spool = spool
        spool.register(str(self.channel_name), self._from_spool, self._chat_key)

    def _chat_key(self, update: dict[str, Any]) -> str | None:
        message = self.to_message(update)
        return message.sender.chat_id if message is not None else None

    # ------------------------------------------------------------------ what a subclass gives

    @abstractmethod
    def message_id(self, update: dict[str, Any]) -> str | None:
        """The update's own message id (the key for deduplication); ``None`` to ignore it."""
        ...

    @abstractmethod
    def to_message(self, update: dict[str, Any]) -> Message | None:
        """The update as a citizen's message; ``None`` for anything the flow skips."""
        ...

    @abstractmethod
    async def send_text(self, chat_id: str, text: str) -> None:
        """Send one text of at most ``max_text`` characters; raise :class:`SendError`."""
        ...

    @abstractmethod
    async def send_photo(self, chat_id: str, photo: bytes, caption: str) -> None:
        """Send one cleaned image with ``caption`` (maybe empty); raise :class:`SendError`."""
        ...

    # ------------------------------------------------------------------ CitizenSender

    @property
    def name(self) -> ChannelName:
        return self.channel_name

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES[self.channel_name]

    async def send(self, chat_id: str, replies: Sequence[Reply]) -> list[str]:
        """Send ``replies`` to a citizen's chat, rendered as text (an image as an image with its
        caption); raise :class:`SendError`. Zalo has no reply-to, so no message id is kept."""
        for message in render_messages(replies, self.capabilities):
            if message.photo is not None:
                await self.send_photo(chat_id, message.photo, message.text)
            else:
                await self.send_text(chat_id, message.text)
        return []

    def state(self) -> str:
        return self._state

    # ------------------------------------------------------------------ receiving

    async def accept(self, update: dict[str, Any]) -> bool:
        """Write ``update`` to the spool, which hands it back to :meth:`_from_spool`; ``False``
        when it is not a message. Raises :class:`~bot.spool.SpoolError` when it is not written
        (the sender must deliver it again)."""
        if self.message_id(update) is None:
            return False
        if self.spool is None:
            raise RuntimeError(f"{self.channel_name}: use_spool() before accepting updates")
        await self.spool.submit(str(self.channel_name), update)
        return True

    def start_purging(self) -> None:
        """Forget old redelivery keys now and then."""
        if self._purger is None or self._purger.done():
            self._purger = asyncio.create_task(self._purge(), name=f"{self.channel_name}-purge")

    async def stop_purging(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None

    async def _purge(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            try:
                await self.inbox.purge()
            except Exception as exc:  # tried again at the next interval
                log.warning("%s: old message ids not purged (%s)", self.channel_name, exc)

    async def _from_spool(self, update: dict[str, Any]) -> bool:
        """Handle a spooled update: ``False`` while the database is down (it stays spooled).

        The inbox still recognises a message id Zalo delivered twice."""
        message_id = self.message_id(update)
        if message_id is None:
            return True
        try:
            row_id = await self.inbox.claim(message_id, update)
        except Exception as exc:
            watch = self.dispatcher.watch
            if watch is not None and await watch.failed(exc):
                await self._noted(self.to_message(update))
                return False
            raise
        if row_id is None:
            log.info("%s: a redelivered message was ignored", self.channel_name)
            return True
        try:
            message = self.to_message(update)
            if message is not None:
                try:
                    await self._process(message)
                except DatabaseDown:
                    await self._noted(message)
                    return False
            await self.inbox.done(row_id)
            return True
        finally:
            async with self._handled:
                self.updates_handled += 1
                self._handled.notify_all()

    async def _noted(self, message: Message | None) -> None:
        """During an outage: "noted, handled as soon as possible", once per citizen."""
        watch = self.dispatcher.watch
        if message is None or watch is None:
            return
        if not watch.first_notice(str(self.channel_name), message.sender.chat_id):
            return
        locale = pick_locale(message.sender.language_code)
        try:
            await self.send(message.sender.chat_id, [Reply(text=t(locale, "outage.noted"))])
        except SendError as exc:
            log.info("%s: the outage notice was not delivered: %s", self.channel_name, exc.reason)

    async def _process(self, message: Message) -> None:
        outcome = await self.dispatcher.process(message, self.fetcher)
        if outcome is None or not outcome.replies:
            return
        texts = render_texts(outcome.replies, self.capabilities)
        if outcome.behind and self.answers is not None:
            # Earlier answers wait in the outbox: these go behind them, never before.
            await self.answers.enqueue(message.sender, [Reply(text=text) for text in texts])
            return
        for index, text in enumerate(texts):
            try:  # tried again after a 429 or a passing error (bot.answers)
                await patiently(functools.partial(self.send_text, message.sender.chat_id, text))
            except SendError as exc:
                # The flow's state is committed. Never log the chat id.
                if exc.gone or exc.permanent or self.answers is None:
                    log.warning("%s: a reply was not delivered: %s", self.channel_name, exc.reason)
                    return
                rest = [Reply(text=t) for t in texts[index:]]
                if await self.answers.enqueue(message.sender, rest):
                    log.warning(
                        "%s: a reply waits in the outbox: %s", self.channel_name, exc.reason
                    )
                return

    async def wait_handled(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` updates in all have been handled (tests)."""
        async with asyncio.timeout(timeout), self._handled:
            await self._handled.wait_for(lambda: self.updates_handled >= count)
