"""Re-renders posted report cards in place after a change of state (Telegram side)."""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from config.queues import QueueMap
from handlers.cards import report_card
from handlers.events import Button
from handlers.officer_events import CardRefresh
from handlers.security import Keyring
from storage.models import CardPost

log = logging.getLogger(__name__)


def inline(buttons: list[list[Button]]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.data) for b in row] for row in buttons]
    )


class TelegramCardView:
    """Edits every active card of a report (or one card, to show a picker)."""

    def __init__(
        self,
        bot: Bot,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        locale: str,
        queues: QueueMap | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.bot = bot
        self.session_factory = session_factory
        self.locale = locale
        self.queues = queues if queues is not None else QueueMap()
        self.keyring = keyring

    async def refresh(self, item: CardRefresh) -> None:
        async with self.session_factory() as session:
            query = select(CardPost).where(
                CardPost.report_id == item.report_id, CardPost.kind == "card"
            )
            if item.chat_id is not None and item.message_id is not None:
                query = query.where(
                    CardPost.chat_id == item.chat_id, CardPost.message_id == item.message_id
                )
            posts = (await session.scalars(query)).all()
            if not posts:
                return
            targets = [(q.key, q.name) for q in self.queues.all_queues]
            active = await report_card(
                session,
                item.report_id,
                locale=self.locale,
                media=False,
                mode=item.mode,
                transfer_targets=targets,
                keyring=self.keyring,
            )
            moved = None
            if any(not p.active for p in posts):
                moved = await report_card(
                    session,
                    item.report_id,
                    locale=self.locale,
                    media=False,
                    moved=True,
                    transfer_targets=targets,
                )
        for post in posts:
            card = active if post.active else moved
            assert card is not None
            await self._edit(post, card.text, inline(card.buttons))

    async def _edit(self, post: CardPost, text: str, markup: InlineKeyboardMarkup | None) -> None:
        try:
            await self.bot.edit_message_text(
                chat_id=post.chat_id,
                message_id=post.message_id,
                text=text,
                parse_mode=ParseMode.HTML,
                reply_markup=markup,
            )
        except BadRequest as exc:
            if "not modified" not in str(exc).lower():
                log.warning("card %s could not be edited: %s", post.id, exc)
        except (Forbidden, RetryAfter, TelegramError) as exc:
            # The card's text is only a view: the state is in the database, and the next
            # change re-renders it.
            log.warning("card %s could not be edited: %s", post.id, type(exc).__name__)

    async def edit_message(
        self, chat_id: int, message_id: int, text: str, buttons: list[list[dict[str, str]]]
    ) -> None:
        markup = (
            InlineKeyboardMarkup(
                [
                    [InlineKeyboardButton(b["label"], callback_data=b["data"]) for b in row]
                    for row in buttons
                ]
            )
            if buttons
            else None
        )
        with contextlib.suppress(BadRequest, Forbidden, RetryAfter):
            await self.bot.edit_message_text(
                chat_id=chat_id, message_id=message_id, text=text, reply_markup=markup
            )
