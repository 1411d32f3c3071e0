"""What both Zalo channels share: the durable inbox, ordered handling per chat, the dispatcher,
and the replies (plain text, and an officer's photo).

An update is stored in the :class:`~bot.zalo.inbox.Inbox` first, then handled by a worker:
updates of one chat in order, different chats concurrently. The update becomes a neutral
:class:`~handlers.events.Message` (the Zalo user id only reaches the flow, which keeps its keyed
hash and encrypts the route back); the :class:`~handlers.events.Outcome` is rendered as text.
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
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._chat_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        #: Updates fully handled (replies sent); waiters are woken on each one (tests).
        self.updates_handled = 0
        self._handled = asyncio.Condition()
        #: The spool updates are written to first (set by the composition root).
        self.spool: SpoolIntake | None = None

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
        """Store ``update`` and queue it; ``False`` when it was ignored or seen before.

        With the spool, it is written there (raising :class:`~bot.spool.SpoolError` when even
        that fails) and handled from it: the database may be down."""
        message_id = self.message_id(update)
        if message_id is None:
            return False
        if self.spool is not None:
            await self.spool.submit(str(self.channel_name), update)
            return True
        row_id = await self.inbox.put(message_id, update)
        if row_id is None:
            log.info("%s: a redelivered message was ignored", self.channel_name)
            return False
        self._queue.put_nowait(row_id)
        return True

    def queue_stored(self, row_id: int) -> None:
        """Handle an update already stored in the inbox (the worker takes it)."""
        self._queue.put_nowait(row_id)

    def start_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"{self.channel_name}-inbox")

    async def stop_worker(self) -> None:
        tasks = [t for t in (self._worker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker = None
        self._tasks.clear()

    async def _work(self) -> None:
        for row_id, pending in await self.inbox.pending():
            self._spawn(row_id, pending)
        last_purge = asyncio.get_running_loop().time()
        while True:
            row_id = await self._queue.get()
            stored = await self.inbox.get(row_id)
            if stored is not None:
                self._spawn(row_id, stored)
            now = asyncio.get_running_loop().time()
            if now - last_purge > PURGE_INTERVAL:
                last_purge = now
                with contextlib.suppress(Exception):
                    await self.inbox.purge()

    def _spawn(self, row_id: int, update: dict[str, Any]) -> None:
        task = asyncio.create_task(self._handle(row_id, update))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, row_id: int, update: dict[str, Any]) -> None:
        try:
            message = self.to_message(update)
            if message is None:
                await self.inbox.done(row_id)
                return
            async with self._chat_lock(message.sender.chat_id):
                await self._process(message)
                await self.inbox.done(row_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the update stays in the inbox and is tried again at the next start
            log.exception("%s: an update could not be handled", self.channel_name)
        finally:
            async with self._handled:
                self.updates_handled += 1
                self._handled.notify_all()

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
        try:  # each text tried again after a 429 or a passing error (bot.answers)
            for text in render_texts(outcome.replies, self.capabilities):
                await patiently(functools.partial(self.send_text, message.sender.chat_id, text))
        except SendError as exc:
            # The flow's state is committed; the citizen sees the next prompt on their next
            # message. Never log the chat id.
            log.warning("%s: a reply was not delivered: %s", self.channel_name, exc.reason)

    @contextlib.asynccontextmanager
    async def _chat_lock(self, chat_id: str) -> Any:
        lock, users = self._chat_locks.get(chat_id, (asyncio.Lock(), 0))
        self._chat_locks[chat_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._chat_locks[chat_id]
            if users <= 1:
                del self._chat_locks[chat_id]
            else:
                self._chat_locks[chat_id] = (lock, users - 1)

    async def wait_handled(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` updates in all have been handled (tests)."""
        async with asyncio.timeout(timeout), self._handled:
            await self._handled.wait_for(lambda: self.updates_handled >= count)
