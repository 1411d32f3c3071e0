"""Telegram as a citizen channel for the runtime: the sender the outbox uses to reach a tipster,
and the :class:`~bot.channel.Channel` that the composition root registers.

The sender wraps python-telegram-bot: one ``sendMessage`` per reply, inline buttons where the
reply has them; a reply with a photo is a ``sendPhoto`` with the text as its caption (a text too
long for a caption follows the photo as its own message, with the buttons). Telegram's errors
become :class:`~bot.channel.SendError` flags: a 429 carries ``retry_after``; a blocked bot or a
deleted account is ``gone``; any other request the Bot API refuses is ``permanent``; the rest
(5xx, timeouts, network) is transient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from telegram import Bot
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bot.answers import retry_after_seconds
from bot.channel import SendError
from bot.telegram_markup import reply_markup
from handlers.channels import CAPABILITIES, Capabilities, ChannelName
from handlers.events import Reply

if TYPE_CHECKING:
    from bot.telegram import TelegramChannel


#: The longest caption of a photo on Telegram.
CAPTION_MAX = 1024


class TelegramCitizenSender:
    """Sends neutral replies to a tipster's private chat with the bot."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    @property
    def name(self) -> ChannelName:
        return ChannelName.TELEGRAM

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES[ChannelName.TELEGRAM]

    async def send(self, chat_id: str, replies: Sequence[Reply]) -> list[str]:
        sent: list[str] = []
        for reply in replies:
            markup = reply_markup(reply)
            try:
                if reply.photo is not None:
                    fits = len(reply.text) <= CAPTION_MAX
                    message = await self.bot.send_photo(
                        chat_id=int(chat_id),
                        photo=reply.photo,
                        caption=reply.text if fits else None,
                        reply_markup=markup if fits else None,
                    )
                    if not fits:
                        sent.append(str(message.message_id))
                        message = await self.bot.send_message(
                            chat_id=int(chat_id), text=reply.text, reply_markup=markup
                        )
                else:
                    message = await self.bot.send_message(
                        chat_id=int(chat_id), text=reply.text, reply_markup=markup
                    )
            except RetryAfter as exc:
                raise SendError("429", retry_after=retry_after_seconds(exc)) from exc
            except Forbidden as exc:
                raise SendError(f"forbidden: {exc.message[:200]}", gone=True) from exc
            except BadRequest as exc:
                gone = "chat not found" in exc.message.lower()
                raise SendError(exc.message[:200], gone=gone, permanent=not gone) from exc
            except TelegramError as exc:
                raise SendError(type(exc).__name__) from exc
            sent.append(str(message.message_id))
        return sent


class TelegramCitizenChannel(TelegramCitizenSender):
    """The Telegram channel as the registry sees it: the adapter's lifecycle and state, and the
    sender above over the adapter's bot."""

    def __init__(self, channel: TelegramChannel) -> None:
        super().__init__(channel.application.bot)
        self.channel = channel

    async def start(self) -> None:
        self.channel.start_background()

    async def stop(self) -> None:
        await self.channel.stop()

    def state(self) -> str:
        return str(self.channel.state)
