"""The Telegram sender for officers' chats: cards, digests, reminders, alerts, chat messages and
relayed answers.

A row becomes one or more Bot API calls, each a *part* (card, map pin, evidence album, ...).
The worker runs each part (:class:`Parts`): it waits for the budgets, makes the call, and
records the part as done in its own commit, so a retry sends only the rest. Evidence is
re-sent from the cleaned bytes or the channel's file id, never forwarded; nothing sent here
identifies a tipster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import (
    Bot,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    LinkPreviewOptions,
    ReplyParameters,
)
from telegram.constants import ParseMode
from telegram.error import BadRequest, ChatMigrated, Forbidden, TelegramError

from bot.delivery.rows import Job, RenderFailed
from handlers.cards import Card, CardMedia, alert_card, digest_card, reminder_card, report_card
from handlers.events import Button
from handlers.i18n import t
from handlers.outbox import (
    AlertPayload,
    CardPayload,
    ChatTextPayload,
    DigestPayload,
    DocumentPayload,
    DocumentRenderer,
    Kind,
    RelayPayload,
    ReminderPayload,
    payload_of,
)
from handlers.security import Keyring, format_code
from storage.db import reading
from storage.models import CardPost, MediaBlob, RelayMessage, Report

#: Telegram's descriptions of a chat the bot can no longer post to (lower case).
_CHAT_GONE_MARKERS: Final = (
    "chat not found",
    "bot was kicked",
    "bot was blocked",
    "bot is not a member",
    "not enough rights",
    "have no rights",
    "need administrator rights",
    "chat_write_forbidden",
    "chat_restricted",
    "group chat was deactivated",
    "chat was deleted",
    "peer_id_invalid",
    "message thread not found",
    "topic_deleted",
    "topic_closed",
    "user is deactivated",
)
_NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)

Call = Callable[[], Awaitable[Any]]


class Parts(Protocol):
    """Runs the parts of a row (the worker): pacing, the call, the progress record."""

    async def part(
        self,
        job: Job,
        name: str,
        weight: int,
        call: Call,
        *,
        optional: bool = False,
        finish: bool = False,
        markup: InlineKeyboardMarkup | None = None,
        probeable: bool = True,
    ) -> None: ...

    async def finish(self, job: Job) -> None: ...


def is_chat_gone(exc: TelegramError) -> bool:
    """True when ``exc`` says the bot can no longer post to the chat (a permanent error)."""
    if isinstance(exc, Forbidden | ChatMigrated):
        return True
    if isinstance(exc, BadRequest):
        text = exc.message.lower()
        return any(marker in text for marker in _CHAT_GONE_MARKERS)
    return False


def markup(buttons: Sequence[Sequence[Button]]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.data) for b in row] for row in buttons]
    )


def media_parts(media: Sequence[CardMedia]) -> list[list[CardMedia]]:
    """Consecutive photos with bytes become albums of ≤ 10; everything else goes alone."""
    parts: list[list[CardMedia]] = []
    album: list[CardMedia] = []
    for item in media:
        if item.content is not None and item.kind == "photo":
            album.append(item)
            if len(album) == 10:
                parts.append(album)
                album = []
            continue
        if album:
            parts.append(album)
            album = []
        parts.append([item])
    if album:
        parts.append(album)
    return parts


class OfficerSender:
    """Turns an officers' outbox row into Bot API calls."""

    def __init__(
        self,
        bot: Bot,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        locale: str,
        keyring: Keyring | None,
        documents: DocumentRenderer | None = None,
    ) -> None:
        self.bot = bot
        self.session_factory = session_factory
        self.locale = locale
        self.keyring = keyring
        self.documents = documents

    async def send(self, job: Job, parts: Parts) -> None:
        """Send the row; ``LookupError`` when its report (or relay) is gone or its kind is not
        one of the officers' kinds."""
        data = dict(job.payload)
        if job.row.report_id is not None:
            data.setdefault("report_id", job.row.report_id)
        try:
            payload = payload_of(job.row.kind, data)
        except TypeError as exc:
            raise LookupError(f"{job.row.kind} row with a broken payload: {exc}") from exc
        if isinstance(payload, CardPayload):
            await self._card(job, payload, parts)
        elif isinstance(payload, DigestPayload):
            await self._digest(job, payload, parts)
        elif isinstance(payload, ReminderPayload):
            await self._reminder(job, payload, parts)
        elif isinstance(payload, AlertPayload):
            await self._alert(job, payload, parts)
        elif isinstance(payload, ChatTextPayload):
            await self._chat_text(job, payload, parts)
        elif isinstance(payload, RelayPayload):
            await self._relay(job, payload, parts)
        elif isinstance(payload, DocumentPayload):
            await self._document(job, payload, parts)
        else:
            raise LookupError(f"outbox kind {job.row.kind!r} is not sent to officers")

    # -------------------------------------------------------------------------- helpers

    @staticmethod
    def common(job: Job) -> dict[str, Any]:
        return {
            "chat_id": job.target.chat_id,
            "message_thread_id": job.target.thread_id,
            "protect_content": True,
        }

    async def _render(self, build: Callable[[AsyncSession], Awaitable[Card]]) -> Card:
        async with reading(self.session_factory) as session:
            return await build(session)

    async def card_message(self, job: Job, report_id: int | None) -> int | None:
        """The message id of the report's active card in this chat, to reply to."""
        if report_id is None:
            return None
        async with reading(self.session_factory) as session:
            found = await session.scalar(
                select(CardPost.message_id)
                .where(
                    CardPost.report_id == report_id,
                    CardPost.chat_id == job.target.chat_id,
                    CardPost.kind == "card",
                    CardPost.active.is_(True),
                )
                .order_by(CardPost.id.desc())
            )
        return int(found) if found is not None else None

    async def _reply_to_card(self, job: Job, report_id: int | None) -> ReplyParameters | None:
        message_id = await self.card_message(job, report_id)
        if message_id is None:
            return None
        return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)

    async def _html(self, job: Job, parts: Parts, name: str, card: Card, **extra: Any) -> None:
        common = self.common(job)
        keyboard = markup(card.buttons)
        await parts.part(
            job,
            name,
            1,
            lambda: self.bot.send_message(
                text=card.text,
                parse_mode=ParseMode.HTML,
                reply_markup=keyboard,
                link_preview_options=_NO_PREVIEW,
                **extra,
                **common,
            ),
            finish=True,
            markup=keyboard,
        )

    # -------------------------------------------------------------------------- kinds

    async def _card(self, job: Job, payload: CardPayload, parts: Parts) -> None:
        report_id = payload.report_id
        card = await self._render(
            lambda s: report_card(
                s,
                report_id,
                locale=self.locale,
                header_key=payload.header,
                keyring=self.keyring,
            )
        )
        common = self.common(job)
        keyboard = markup(card.buttons)  # it names the report: no other message has it
        evidence = media_parts(card.media)
        last = len(evidence) - 1
        # The last part's record marks the row sent (one write less after a plain card).
        await parts.part(
            job,
            "card",
            1,
            lambda: self.bot.send_message(
                text=card.text,
                parse_mode=ParseMode.HTML,
                reply_markup=keyboard,
                link_preview_options=_NO_PREVIEW,
                **common,
            ),
            markup=keyboard,
            finish=card.location is None and last < 0,
        )
        reply = ReplyParameters(
            message_id=int(job.payload["msg"]), allow_sending_without_reply=True
        )
        if card.location is not None:
            pin = card.location
            await parts.part(
                job,
                "loc",
                1,
                lambda: self.bot.send_location(
                    latitude=pin.latitude,
                    longitude=pin.longitude,
                    reply_parameters=reply,
                    **common,
                ),
                finish=last < 0,
            )
        for index, part in enumerate(evidence):
            await parts.part(
                job,
                f"m{index}",
                len(part),
                self._media_call(part, reply, common),
                optional=True,
                finish=index == last,
            )
        await parts.finish(job)  # (nothing, if the last part did)

    def _media_call(
        self, part: list[CardMedia], reply: ReplyParameters, common: dict[str, Any]
    ) -> Call:
        """The Bot API call re-sending one piece (or album) of evidence: uploaded bytes of the
        cleaned image, or the channel's file id. Never a forward or a copy of the citizen's
        message."""
        bot = self.bot
        if len(part) > 1:
            album = [
                InputMediaPhoto(media=m.content or b"", caption=m.caption, filename=m.file_name)
                for m in part
            ]
            return lambda: bot.send_media_group(media=album, reply_parameters=reply, **common)
        item = part[0]
        caption = item.caption
        if item.content is not None:  # cleaned bytes, uploaded under their neutral name
            upload = InputFile(item.content, filename=item.file_name)
            if item.kind == "photo":
                return lambda: bot.send_photo(
                    photo=upload, caption=caption, reply_parameters=reply, **common
                )
            if item.kind == "video":
                return lambda: bot.send_video(
                    video=upload, caption=caption, reply_parameters=reply, **common
                )
            if item.kind == "voice" and (item.mime or "").startswith("audio/ogg"):
                return lambda: bot.send_voice(
                    voice=upload, caption=caption, reply_parameters=reply, **common
                )
            return lambda: bot.send_document(
                document=upload, caption=caption, reply_parameters=reply, **common
            )
        ref = item.file_ref or ""
        senders: dict[str, Callable[..., Awaitable[Any]]] = {
            "photo": lambda: bot.send_photo(
                photo=ref, caption=caption, reply_parameters=reply, **common
            ),
            "video": lambda: bot.send_video(
                video=ref, caption=caption, reply_parameters=reply, **common
            ),
            "voice": lambda: bot.send_voice(
                voice=ref, caption=caption, reply_parameters=reply, **common
            ),
            "audio": lambda: bot.send_audio(
                audio=ref, caption=caption, reply_parameters=reply, **common
            ),
            "animation": lambda: bot.send_animation(
                animation=ref, caption=caption, reply_parameters=reply, **common
            ),
            "video_note": lambda: bot.send_video_note(
                video_note=ref, reply_parameters=reply, **common
            ),
        }
        return senders.get(
            item.kind,
            lambda: bot.send_document(
                document=ref, caption=caption, reply_parameters=reply, **common
            ),
        )

    async def _digest(self, job: Job, payload: DigestPayload, parts: Parts) -> None:
        ids = [i for i in payload.report_ids if isinstance(i, int)]
        card = await self._render(lambda s: digest_card(s, ids, locale=self.locale))
        await self._html(job, parts, "digest", card)

    async def _reminder(self, job: Job, payload: ReminderPayload, parts: Parts) -> None:
        """A short reminder, as a reply to the report's card where that chat shows it (an
        unacknowledged emergency already in the duty queue is not posted again)."""
        report_id = payload.report_id
        card = await self._render(
            lambda s: reminder_card(s, report_id, locale=self.locale, reason=payload.reason)
        )
        reply = await self._reply_to_card(job, report_id)
        await self._html(job, parts, "text", card, reply_parameters=reply)

    async def _alert(self, job: Job, payload: AlertPayload, parts: Parts) -> None:
        values = {
            k: v
            for k, v in (
                ("queue", payload.queue),
                ("chat", payload.chat),
                ("error", payload.error),
            )
            if v is not None
        }
        card = alert_card(locale=self.locale, reason=payload.reason, **values)
        await self._html(job, parts, "text", card)

    async def _chat_text(self, job: Job, payload: ChatTextPayload, parts: Parts) -> None:
        """A plain message to officers: a prompt (force reply), a list, a confirmation."""
        text = payload.text[:4096]
        reply_markup: InlineKeyboardMarkup | ForceReply | None = None
        rows = payload.button_rows()
        if rows:
            reply_markup = markup([[Button(b.label, b.data) for b in row] for row in rows])
        elif payload.force_reply:
            reply_markup = ForceReply(selective=False)
        reply = await self._reply_to_card(job, payload.reply_to_report)
        common = self.common(job)
        await parts.part(
            job,
            "text",
            1,
            lambda: self.bot.send_message(
                text=text, reply_markup=reply_markup, reply_parameters=reply, **common
            ),
            finish=True,
            markup=reply_markup if isinstance(reply_markup, InlineKeyboardMarkup) else None,
            # Telegram never lets a bot edit a message sent with force_reply: no probe for it.
            probeable=not isinstance(reply_markup, ForceReply),
        )

    async def _relay(self, job: Job, payload: RelayPayload, parts: Parts) -> None:
        """A tipster's answer or addition, as a reply to the report's card. Photos are the
        cleaned bytes; nothing in it identifies the tipster."""
        async with reading(self.session_factory) as session:
            relay = await session.get(RelayMessage, payload.relay_id)
            if relay is None:
                raise LookupError("relay row without its message")
            report = await session.get(Report, relay.report_id)
            if report is None:
                raise LookupError("relay row without its report")
            content = (
                await session.scalar(
                    select(MediaBlob.content).where(MediaBlob.id == relay.blob_id)
                )
                if relay.blob_id is not None
                else None
            )
        key = "relay.addition_from_tipster" if payload.addition else "relay.from_tipster"
        head = t(self.locale, key, code=format_code(report.code))
        reply = await self._reply_to_card(job, report.id)
        common = self.common(job)
        if relay.latitude is not None and relay.longitude is not None:
            lat, lon = relay.latitude, relay.longitude
            await parts.part(
                job,
                "text",
                1,
                lambda: self.bot.send_message(text=head, reply_parameters=reply, **common),
            )
            await parts.part(
                job,
                "loc",
                1,
                lambda: self.bot.send_location(
                    latitude=lat, longitude=lon, reply_parameters=reply, **common
                ),
                finish=True,
            )
            return
        body = f"{head}\n{relay.text}" if relay.text else head
        if content is not None:
            photo = content
            await parts.part(
                job,
                "photo",
                1,
                lambda: self.bot.send_photo(
                    photo=photo, caption=body[:1024], reply_parameters=reply, **common
                ),
                finish=True,
            )
            return
        await parts.part(
            job,
            "text",
            1,
            lambda: self.bot.send_message(text=body[:4096], reply_parameters=reply, **common),
            finish=True,
        )

    async def _document(self, job: Job, payload: DocumentPayload, parts: Parts) -> None:
        """A file (the monthly statistics report), rendered now from what the row names and
        uploaded (``sendDocument``, multipart). Not rendered again once sent."""
        if "doc" in job.done:
            await parts.finish(job)
            return
        if self.documents is None:
            raise LookupError("no document renderer in this process")
        try:
            document = await self.documents.render(payload, self.locale)
        except LookupError:
            raise
        except Exception as exc:
            raise RenderFailed(f"{payload.document} {payload.period}") from exc
        upload = InputFile(document.content, filename=document.file_name)
        common = self.common(job)
        await parts.part(
            job,
            "doc",
            1,
            lambda: self.bot.send_document(
                document=upload, caption=document.caption[:1024], **common
            ),
            finish=True,
        )


#: The kinds :class:`OfficerSender` takes.
SENT_KINDS: Final = tuple(
    k.value
    for k in (
        Kind.REPORT_CARD,
        Kind.DIGEST,
        Kind.REMINDER,
        Kind.ALERT,
        Kind.CHAT_TEXT,
        Kind.RELAY_TO_OFFICERS,
        Kind.DOCUMENT,
    )
)

__all__ = ["SENT_KINDS", "OfficerSender", "Parts", "is_chat_gone", "markup", "media_parts"]
