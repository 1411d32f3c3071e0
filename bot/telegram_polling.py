"""Long polling that confirms an update to Telegram only once it is handled.

python-telegram-bot's ``Updater`` moves the ``getUpdates`` offset past a batch as soon as it has
put the batch in its queue (``Updater._network_loop``: ``self._last_update_id =
updates[-1].update_id + 1`` before any handler runs). An update met by a database outage was
then confirmed and lost. Here each batch is handled first (one chat's updates in order,
different chats concurrently), and the offset moves only past the updates that were handled:
from the first one that was not (its chat's later ones are not even tried, to keep their
order), nothing is confirmed, so Telegram keeps them (24 h) and hands them out again.

While the database is down the loop keeps polling, slowly, from the same offset: citizens who
write meanwhile are told once that their message is noted, and nothing is confirmed. Updates
handled after the first unhandled one come again later and are recognised as duplicates by
the update ids stored with the conversations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from telegram import Bot, Update
from telegram.error import Conflict, InvalidToken, TelegramError

log = logging.getLogger(__name__)

#: Seconds between polls while updates wait for the database.
HELD_POLL = 1.0


def chat_key_of(update: Update) -> str:
    chat = update.effective_chat
    if chat is not None:
        return str(chat.id)
    user = update.effective_user
    return f"u{user.id}" if user is not None else f"#{update.update_id}"


async def handle_batch(
    updates: Sequence[Update], handle: Callable[[Update], Awaitable[bool]]
) -> int:
    """Handle ``updates``; the number of leading updates that are handled (safe to confirm)."""
    chats: dict[str, list[int]] = {}
    for index, update in enumerate(updates):
        chats.setdefault(chat_key_of(update), []).append(index)
    done = [False] * len(updates)

    async def one_chat(indexes: list[int]) -> None:
        for index in indexes:
            if not await handle(updates[index]):
                return  # the chat's later updates wait, to keep their order
            done[index] = True

    await asyncio.gather(*(one_chat(indexes) for indexes in chats.values()))
    confirmed = 0
    while confirmed < len(done) and done[confirmed]:
        confirmed += 1
    return confirmed


class ConfirmingPoller:
    """The ``getUpdates`` loop of one bot."""

    def __init__(
        self,
        bot: Bot,
        handle: Callable[[Update], Awaitable[bool]],
        *,
        timeout: int,
        allowed_updates: list[str],
        on_error: Callable[[TelegramError], None],
    ) -> None:
        self.bot = bot
        self.handle = handle
        self.timeout = timeout
        self.allowed_updates = allowed_updates
        self.on_error = on_error
        #: The next ``offset``: every update below it is handled and confirmed.
        self.offset: int | None = None
        #: Updates handed out again because they were not handled the first time.
        self.held = 0

    async def run(self) -> None:
        delay = 1.0
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=self.offset,
                    timeout=self.timeout,
                    allowed_updates=self.allowed_updates,
                )
            except InvalidToken:
                raise
            except Conflict as exc:  # another process polls the same bot
                self.on_error(exc)
                await asyncio.sleep(max(delay, 5.0))
                continue
            except TelegramError as exc:
                self.on_error(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            if not updates:
                continue
            confirmed = await handle_batch(updates, self.handle)
            if confirmed:
                self.offset = updates[confirmed - 1].update_id + 1
            if confirmed < len(updates):
                self.held += len(updates) - confirmed
                await asyncio.sleep(HELD_POLL)
