"""A neutral reply's keyboard as Telegram markup: inline buttons, a reply keyboard (with one
location or contact request button), or the keyboard's removal. Shared by the direct answers
(:mod:`bot.telegram`) and the citizens' outbox (:mod:`bot.telegram_citizen`), so a queued
answer looks as it would have."""

from __future__ import annotations

from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)

from handlers.events import Reply


def reply_markup(
    reply: Reply,
) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | None:
    """A neutral reply's buttons, reply keyboard or keyboard removal, as Telegram markup."""
    if reply.buttons:
        return InlineKeyboardMarkup(
            [
                [InlineKeyboardButton(b.label, callback_data=b.data) for b in row]
                for row in reply.buttons
            ]
        )
    if reply.keyboard is not None:
        rows: list[list[KeyboardButton]] = []
        if reply.keyboard.request_location:
            rows.append([KeyboardButton(reply.keyboard.request_location, request_location=True)])
        if reply.keyboard.request_contact:
            rows.append([KeyboardButton(reply.keyboard.request_contact, request_contact=True)])
        rows += [[KeyboardButton(label)] for label in reply.keyboard.labels]
        return ReplyKeyboardMarkup(rows, resize_keyboard=True, one_time_keyboard=False)
    if reply.remove_keyboard:
        return ReplyKeyboardRemove()
    return None


__all__ = ["reply_markup"]
