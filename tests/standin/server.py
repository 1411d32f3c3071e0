"""An in-process stand-in for the Telegram Bot API, served over real HTTP by aiohttp.

The real python-telegram-bot ``Bot``/``Application`` talks to it through ``base_url`` and
``base_file_url``, so requests go through PTB's own encoding (httpx, form-urlencoded or
multipart) and its own error mapping (``RetryAfter``, ``Forbidden``, ``BadRequest`` ...).

How PTB 22 sends requests (read from ``telegram/request/_httpxrequest.py``): every method is a
``POST {base_url}{token}/{method}``. Without files the body is
``application/x-www-form-urlencoded``; with files it is ``multipart/form-data``. In both
cases every value is a *string*: ``str`` values are sent as they are, everything else (ints,
bools, lists, ``reply_markup`` ...) is ``json.dumps``-ed. An ``InputFile`` that is the whole
parameter (e.g. ``sendPhoto(photo=bytes)``) becomes a file part named after the parameter and
the parameter itself is not sent; files inside ``InputMedia`` are parts named
``attached<hex>`` referenced as ``attach://attached<hex>``. This server decodes all of that
back into typed ``params`` and keeps the uploaded bytes in ``ApiCall.files``. A plain JSON body
(other clients, hand-made tests) and GET query strings are accepted too.

Behaviour that mirrors Telegram (so tests catch real bugs):

* ``getUpdates`` long-polls, returns as soon as updates are queued, honours ``offset`` (updates
  below it are confirmed and dropped, a negative offset keeps the last ``-offset``), ``limit``,
  ``timeout`` and the sticky ``allowed_updates`` setting, answers 409 while a webhook is set and
  409 to an older poll when a newer one arrives.
* With a webhook set, queued updates are POSTed to it, oldest first, until a 2xx (anything else
  is tried again after ``webhook_retry_delay``); ``webhook_connections`` of them in flight at
  once, at most ``setWebhook``'s ``max_connections`` (default 40), but one chat's messages (and
  one user's button presses) one after the other, as Telegram's server does
  (:func:`webhook_queue`).
* Text and captions are checked: HTML is parsed (unknown tags, stray ``<`` and unbalanced tags are
  400 "can't parse entities"), MarkdownV2 unescaped reserved characters are rejected, length is
  counted in UTF-16 units after parsing (4096 text / 1024 caption), ``callback_data`` over 64
  bytes is ``BUTTON_DATA_INVALID``.
* Edits: ``message to edit not found``, ``message can't be edited`` (not the bot's, or sent with
  a reply keyboard or ``force_reply``, which Telegram never lets a bot edit),
  ``message is not modified`` (same content and markup: for ``editMessageReplyMarkup``, the same
  markup); editing text without ``reply_markup`` removes the inline keyboard.
  ``deleteMessage`` of an unknown message and replies to unknown messages are 400.
* Sent messages get per-chat increasing ``message_id`` (shared with messages pushed as updates),
  ``from`` = the bot, the chat object, and echo an *inline* ``reply_markup`` only.

A response can be held back (``delay_response``): the call is carried out at once (a message is
created and recorded) and only its answer waits, as when Telegram did the work and the answer
was lost or came after the client's read timeout. Or the connection can be closed instead of
answering (``drop_connection``): the work was done, the client sees the connection lost.

Choices that are deliberately lenient: chats the server has never seen are synthesised (positive
id = private chat, ``-100...`` = supergroup, other negative = group) unless
``strict_chats=True``; webhook URLs may be plain http on any port; uploaded photos are not checked
to be images unless ``strict_media=True``.

Flood limits (``enforce_flood_limits=True``): only *message-creating* methods count (``send*``
except ``sendChatAction``, ``copy*``, ``forward*``; a media group or ``copyMessages`` counts one
per item). Edits, deletes and callback answers are not counted. Limits are a token bucket of
``per_chat_per_second`` with ``per_chat_burst`` per chat, ``group_per_minute`` per group chat
(negative id; all forum topics share it) over a sliding 60 s window, and ``global_per_second``
over a sliding 1 s window.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import inspect
import io
import itertools
import json
import math
import re
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any, Final

import aiohttp
from aiohttp import web

__all__ = [
    "DEFAULT_TOKEN",
    "SENDING_METHODS",
    "USE_REGISTERED_SECRET",
    "ApiCall",
    "ApiError",
    "BotAPIStandIn",
    "FloodLimits",
    "StandInStats",
    "StoredFile",
    "UploadedFile",
    "WebhookDelivery",
    "bad_request",
]

JSON = dict[str, Any]
ChatKey = int | str
Predicate = Callable[["ApiCall"], bool]
MethodHandler = Callable[["ApiCall"], Any]

DEFAULT_TOKEN: Final = "123456:TEST"
DEFAULT_BOT_USERNAME: Final = "tinbao_test_bot"
DEFAULT_BOT_FIRST_NAME: Final = "Tin báo (test)"

MAX_TEXT_LENGTH: Final = 4096
MAX_CAPTION_LENGTH: Final = 1024
MAX_CALLBACK_DATA_BYTES: Final = 64
MAX_DOWNLOAD_BYTES: Final = 20 * 1024 * 1024
MAX_UPLOAD_BYTES: Final = 50 * 1024 * 1024

_BOT_PATH_RE: Final = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[^/]*)$")
_FILE_PATH_RE: Final = re.compile(r"^/file/bot(?P<token>[^/]+)/(?P<path>.+)$")
_TOKEN_RE: Final = re.compile(r"^(?P<bot_id>\d+):[^/\s]+$")
_INT_RE: Final = re.compile(r"^-?\d+$")
_SECRET_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_COMMAND_RE: Final = re.compile(r"^[a-z0-9_]{1,32}$")

#: Parameters that are strings in the Bot API even when they look like numbers or JSON.
_STRING_PARAMS: Final = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "callback_query_id",
        "inline_message_id",
        "file_id",
        "url",
        "secret_token",
        "ip_address",
        "title",
        "address",
        "foursquare_id",
        "foursquare_type",
        "google_place_id",
        "google_place_type",
        "phone_number",
        "first_name",
        "last_name",
        "vcard",
        "emoji",
        "action",
        "message_effect_id",
        "business_connection_id",
        "language_code",
        "description",
        "short_description",
        "name",
        "performer",
        "question",
        "explanation",
        "custom_title",
        "photo",
        "video",
        "document",
        "voice",
        "audio",
        "animation",
        "sticker",
        "video_note",
        "thumbnail",
    }
)
#: Parameters that are integer ids; a numeric string is turned into an int.
_ID_PARAMS: Final = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "message_thread_id",
        "user_id",
        "reply_to_message_id",
    }
)
#: Parameters carrying JSON objects/arrays; a JSON string (allowed by Telegram) is decoded.
_JSON_PARAMS: Final = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "media",
        "commands",
        "scope",
        "allowed_updates",
        "reply_parameters",
        "link_preview_options",
        "message_ids",
        "reaction",
        "menu_button",
    }
)

#: Methods that create messages in the target chat (``sent_to``, ``stats.sent``, flood limits).
SENDING_METHODS: Final = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendVideo",
        "sendDocument",
        "sendVoice",
        "sendAudio",
        "sendAnimation",
        "sendSticker",
        "sendVideoNote",
        "sendLocation",
        "sendVenue",
        "sendContact",
        "sendMediaGroup",
        "copyMessage",
        "copyMessages",
        "forwardMessage",
        "forwardMessages",
    }
)
_EDIT_METHODS: Final = frozenset(
    {"editMessageText", "editMessageCaption", "editMessageReplyMarkup", "editMessageMedia"}
)
_CHAT_ACTIONS: Final = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_DEFAULT_EXCLUDED_UPDATES: Final = frozenset(
    {"chat_member", "message_reaction", "message_reaction_count"}
)
_MEDIA_KEYS: Final = (
    "photo",
    "video",
    "document",
    "voice",
    "audio",
    "animation",
    "sticker",
    "video_note",
)
_CAPTIONABLE: Final = frozenset({"photo", "video", "document", "voice", "audio", "animation"})
_CONTENT_KEYS: Final = (
    "text",
    "entities",
    "caption",
    "caption_entities",
    *_MEDIA_KEYS,
    "location",
    "venue",
    "contact",
    "poll",
    "dice",
    "has_media_spoiler",
    "show_caption_above_media",
)
_MESSAGE_UPDATE_KEYS: Final = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
)
_BUTTON_ACTIONS: Final = frozenset(
    {
        "url",
        "callback_data",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)


_KEYBOARD_NOT_ARRAYS: Final = (
    'field "inline_keyboard" of the InlineKeyboardMarkup should be an Array of Arrays'
)


class _Registered(Enum):
    SECRET = "use the secret_token registered with setWebhook"


#: Default for ``deliver_webhook(secret_token=...)``: send the secret given to ``setWebhook``.
USE_REGISTERED_SECRET: Final = _Registered.SECRET


class ApiError(Exception):
    """An error answer of the Bot API; raise it from a custom method handler."""

    def __init__(self, error_code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(f"{error_code} {description}")
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def payload(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class UploadedFile:
    """One multipart file part as received."""

    name: str
    content: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass
class ApiCall:
    """One request to the Bot API, recorded after it was answered."""

    method: str
    params: JSON
    files: dict[str, bytes] = field(default_factory=dict)
    at: float = 0.0
    token: str = DEFAULT_TOKEN
    uploads: dict[str, UploadedFile] = field(default_factory=dict)
    http_method: str = "POST"
    content_type: str = ""
    status: int = 200
    response: JSON = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))

    @property
    def result(self) -> Any:
        return self.response.get("result")

    @property
    def error_code(self) -> int | None:
        return None if self.ok else self.response.get("error_code")

    @property
    def description(self) -> str | None:
        return self.response.get("description")

    @property
    def chat_id(self) -> int | str | None:
        value = self.params.get("chat_id")
        if isinstance(value, str) and _INT_RE.match(value):
            return int(value)
        return value if isinstance(value, int | str) else None

    @property
    def text(self) -> str | None:
        """``text`` or ``caption`` as the bot sent it (markup included)."""
        value = self.params.get("text", self.params.get("caption"))
        return value if isinstance(value, str) else None

    def file(self, ref: str) -> bytes:
        """Bytes of an uploaded part, by part name or ``attach://name``."""
        return self.files[ref.removeprefix("attach://")]

    def media_files(self) -> list[bytes]:
        """Uploaded bytes of a ``sendMediaGroup``'s items, in album order."""
        media = self.params.get("media")
        out: list[bytes] = []
        if isinstance(media, list):
            for item in media:
                ref = item.get("media") if isinstance(item, dict) else None
                if isinstance(ref, str) and ref.startswith("attach://"):
                    out.append(self.file(ref))
        return out

    def summary(self) -> str:
        status = "ok" if self.ok else f"{self.error_code} {self.description}"
        shown = {k: v for k, v in self.params.items() if k not in ("media",)}
        text = json.dumps(shown, ensure_ascii=False, default=str)
        if len(text) > 160:
            text = text[:157] + "..."
        return f"{self.method} {text} -> {status}"


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    content: bytes | None
    file_path: str | None
    kind: str | None = None
    file_name: str | None = None
    mime_type: str | None = None

    @property
    def file_size(self) -> int | None:
        return None if self.content is None else len(self.content)


def webhook_queue(update: JSON) -> str:
    """The webhook queue of an update. Telegram's Bot API server sends the updates of one queue
    one after the other (the next only after the previous one's 2xx) and different queues at
    once: a chat's messages are one queue, a user's button presses another (their own), and any
    other update is a queue of its own."""
    for kind in ("message", "edited_message", "channel_post", "edited_channel_post"):
        body = update.get(kind)
        if isinstance(body, dict) and isinstance(body.get("chat"), dict):
            return f"chat:{body['chat'].get('id')}"
    query = update.get("callback_query")
    if isinstance(query, dict) and isinstance(query.get("from"), dict):
        return f"press:{query['from'].get('id')}"
    return f"update:{update.get('update_id')}"


@dataclass
class WebhookDelivery:
    url: str
    body: bytes
    secret_token: str | None
    status: int | None
    at: float
    error: str | None = None

    @property
    def update(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass
class StandInStats:
    sent: int = 0
    rate_limited: int = 0
    injected_failures: int = 0
    delayed_responses: int = 0
    dropped_connections: int = 0
    sent_per_chat: Counter[ChatKey] = field(default_factory=Counter)


@dataclass
class FloodLimits:
    per_chat_per_second: float = 1.0
    per_chat_burst: int = 3
    group_per_minute: int = 20
    global_per_second: int = 30


@dataclass
class _Injection:
    method: str
    error_code: int
    description: str
    retry_after: int | None
    remaining: int
    chat_id: ChatKey | None

    def matches(self, call: ApiCall) -> bool:
        if self.method not in ("*", call.method):
            return False
        return self.chat_id is None or call.chat_id == self.chat_id


@dataclass
class _Delay:
    method: str
    seconds: float
    remaining: int
    chat_id: ChatKey | None
    #: Instead of answering, close the connection (the work was done).
    drop: bool = False

    def matches(self, call: ApiCall) -> bool:
        if self.method not in ("*", call.method):
            return False
        return self.chat_id is None or call.chat_id == self.chat_id


class _FloodGate:
    def __init__(self, limits: FloodLimits) -> None:
        self.limits = limits
        self._buckets: dict[ChatKey, tuple[float, float]] = {}
        self._groups: dict[ChatKey, deque[float]] = {}
        self._global: deque[float] = deque()

    @staticmethod
    def _is_group(chat: ChatKey) -> bool:
        return isinstance(chat, int) and chat < 0

    @staticmethod
    def _window_wait(
        window: deque[float], period: float, limit: int, weight: int, now: float
    ) -> float:
        while window and window[0] <= now - period:
            window.popleft()
        weight = min(weight, limit)
        if len(window) + weight <= limit:
            return 0.0
        oldest_needed = window[len(window) + weight - limit - 1]
        return oldest_needed + period - now

    def check(self, chat: ChatKey, weight: int, now: float) -> int | None:
        waits: list[float] = []
        tokens, last = self._buckets.get(chat, (float(self.limits.per_chat_burst), now))
        tokens = min(
            float(self.limits.per_chat_burst),
            tokens + (now - last) * self.limits.per_chat_per_second,
        )
        if tokens < 1.0:
            waits.append((1.0 - tokens) / self.limits.per_chat_per_second)
        if self._is_group(chat):
            window = self._groups.setdefault(chat, deque())
            waits.append(
                self._window_wait(window, 60.0, self.limits.group_per_minute, weight, now)
            )
        waits.append(
            self._window_wait(self._global, 1.0, self.limits.global_per_second, weight, now)
        )
        worst = max(waits)
        if worst <= 0:
            return None
        return max(1, math.ceil(worst))

    def commit(self, chat: ChatKey, weight: int, now: float) -> None:
        tokens, last = self._buckets.get(chat, (float(self.limits.per_chat_burst), now))
        tokens = min(
            float(self.limits.per_chat_burst),
            tokens + (now - last) * self.limits.per_chat_per_second,
        )
        self._buckets[chat] = (tokens - weight, now)
        if self._is_group(chat):
            self._groups.setdefault(chat, deque()).extend([now] * weight)
        self._global.extend([now] * weight)


# --------------------------------------------------------------------------------------------
# Text parsing (parse_mode)
# --------------------------------------------------------------------------------------------

_TAG_RE: Final = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)"
    r"((?:\s+[a-zA-Z_][a-zA-Z0-9_-]*(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?)*)\s*>"
)
_ATTR_RE: Final = re.compile(
    r"([a-zA-Z_][a-zA-Z0-9_-]*)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+)))?"
)
_HTML_ENTITY_RE: Final = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|lt|gt|amp|quot);")
_HTML_TAGS: Final = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}


class _ParseError(Exception):
    pass


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def parse_html(text: str) -> tuple[str, list[JSON]]:
    """Telegram-style HTML to (plain text, entities); raises ``_ParseError`` like Telegram."""
    out: list[str] = []
    pos = 0  # UTF-16 offset of the output so far
    stack: list[tuple[str, int, dict[str, str]]] = []
    entities: list[JSON] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "<":
            match = _TAG_RE.match(text, i)
            if match is None:
                raise _ParseError(
                    f"Unexpected end of name token at byte offset {_byte_offset(text, i)}"
                )
            closing, name = match.group(1) == "/", match.group(2).lower()
            if not closing:
                attrs = {
                    m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
                    for m in _ATTR_RE.finditer(match.group(3))
                }
                if name not in _HTML_TAGS or (
                    name == "span" and attrs.get("class") != "tg-spoiler"
                ):
                    raise _ParseError(
                        f'Unsupported start tag "{name}" at byte offset {_byte_offset(text, i)}'
                    )
                stack.append((name, pos, attrs))
            else:
                if not stack or stack[-1][0] != name:
                    expected = f'"</{stack[-1][0]}>"' if stack else "no end tag"
                    raise _ParseError(
                        f"Unmatched end tag at byte offset {_byte_offset(text, i)}, expected "
                        f'{expected}, found "</{name}>"'
                    )
                open_name, start, attrs = stack.pop()
                length = pos - start
                if length > 0:
                    entities.extend(_html_entity(open_name, start, length, attrs, stack))
            i = match.end()
            continue
        if ch == "&":
            match = _HTML_ENTITY_RE.match(text, i)
            if match is not None:
                piece = html.unescape(match.group(0))
                out.append(piece)
                pos += _utf16_len(piece)
                i = match.end()
                continue
        out.append(ch)
        pos += _utf16_len(ch)
        i += 1
    if stack:
        raise _ParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    # <pre><code class="language-x"> becomes one pre entity with a language
    merged: list[JSON] = []
    for entity in entities:
        if entity.get("_in_pre"):
            for other in entities:
                if (
                    other["type"] == "pre"
                    and other["offset"] == entity["offset"]
                    and other["length"] == entity["length"]
                    and entity.get("language")
                ):
                    other["language"] = entity["language"]
            continue
        merged.append(entity)
    merged.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), merged


def _html_entity(
    name: str, start: int, length: int, attrs: dict[str, str], stack: list[Any]
) -> list[JSON]:
    kind = _HTML_TAGS[name]
    entity: JSON = {"type": kind, "offset": start, "length": length}
    if name == "a":
        href = attrs.get("href")
        if not href:
            return []
        entity["url"] = href
    elif name == "code" and stack and stack[-1][0] == "pre":
        cls = attrs.get("class", "")
        entity["_in_pre"] = True
        if cls.startswith("language-"):
            entity["language"] = cls.removeprefix("language-")
    elif name == "blockquote" and "expandable" in attrs:
        entity["type"] = "expandable_blockquote"
    elif name == "tg-emoji":
        entity["custom_emoji_id"] = attrs.get("emoji-id", "")
    return [entity]


_MDV2_ALWAYS_RESERVED: Final = frozenset("#+-={}.!")
_MDV2_TOGGLES: Final = (
    ("||", "Spoiler"),
    ("__", "Underline"),
    ("*", "Bold"),
    ("_", "Italic"),
    ("~", "Strikethrough"),
)


def _find_unescaped(text: str, char: str, start: int) -> int:
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == char:
            return i
        i += 1
    return -1


def parse_markdown_v2(text: str) -> str:
    """Approximate Telegram's MarkdownV2 checks; returns the approximate plain text."""
    out: list[str] = []
    opened: dict[str, int] = {}
    i = 0
    line_start = True
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and 0 < ord(text[i + 1]) < 127:
            out.append(text[i + 1])
            i += 2
            line_start = False
            continue
        if text.startswith("```", i):
            end = text.find("```", i + 3)
            if end < 0:
                raise _ParseError(
                    f"Can't find end of Pre entity at byte offset {_byte_offset(text, i)}"
                )
            body = text[i + 3 : end]
            if "\n" in body:
                first, rest = body.split("\n", 1)
                body = rest if first and " " not in first else body
            out.append(body.replace("\\`", "`").replace("\\\\", "\\"))
            i = end + 3
            continue
        if ch == "`":
            end = _find_unescaped(text, "`", i + 1)
            if end < 0:
                raise _ParseError(
                    f"Can't find end of Code entity at byte offset {_byte_offset(text, i)}"
                )
            out.append(text[i + 1 : end])
            i = end + 1
            continue
        if ch == "]" and text.startswith("(", i + 1):
            end = _find_unescaped(text, ")", i + 2)
            if end < 0:
                raise _ParseError(
                    f"Can't find end of a URL at byte offset {_byte_offset(text, i)}"
                )
            opened.pop("[", None)
            i = end + 1
            continue
        if ch == "[":
            opened["["] = i
            i += 1
            continue
        if ch == ">" and line_start:
            i += 1
            continue
        toggled = False
        for marker, _label in _MDV2_TOGGLES:
            if text.startswith(marker, i):
                if marker in opened:
                    del opened[marker]
                else:
                    opened[marker] = i
                i += len(marker)
                toggled = True
                break
        if toggled:
            continue
        if ch in _MDV2_ALWAYS_RESERVED or ch in "()>]|":
            raise _ParseError(
                f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
            )
        out.append(ch)
        line_start = ch == "\n"
        i += 1
    for marker, label in _MDV2_TOGGLES:
        if marker in opened:
            raise _ParseError(
                f"Can't find end of {label} entity at byte offset "
                f"{_byte_offset(text, opened[marker])}"
            )
    if "[" in opened:
        raise _ParseError(
            f"Can't find end of TextUrl entity at byte offset {_byte_offset(text, opened['['])}"
        )
    return "".join(out)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class BotAPIStandIn:
    """A fake Telegram Bot API server on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        bot_user: JSON | None = None,
        enforce_flood_limits: bool = False,
        flood_limits: FloodLimits | None = None,
        strict_chats: bool = False,
        strict_media: bool = False,
        webhook_retry_delay: float = 0.2,
        webhook_connections: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bot_user: JSON = {
            "id": int(DEFAULT_TOKEN.split(":", 1)[0]),
            "is_bot": True,
            "first_name": DEFAULT_BOT_FIRST_NAME,
            "username": DEFAULT_BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        if bot_user:
            self._bot_user.update(bot_user)
        self.enforce_flood_limits = enforce_flood_limits
        self.flood_limits = flood_limits or FloodLimits()
        self.strict_chats = strict_chats
        self.strict_media = strict_media
        self.webhook_retry_delay = webhook_retry_delay
        #: Webhook deliveries in flight at once (capped by ``setWebhook``'s ``max_connections``,
        #: 40 by default, as Telegram does). 1: one update at a time, each after the previous
        #: one's 2xx; more: other chats' updates go out while one is still being answered (one
        #: chat's still one after the other: :func:`webhook_queue`).
        self.webhook_connections = max(1, webhook_connections)
        self.clock = clock

        self.calls: list[ApiCall] = []
        self.stats = StandInStats()
        self.webhook_deliveries: list[WebhookDelivery] = []

        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._calls_changed = asyncio.Event()
        self._updates_changed = asyncio.Event()

        self._updates: list[JSON] = []
        self._last_update_id = 0
        self._allowed_updates: frozenset[str] | None = None
        self._poll_generation = 0

        self._webhook: JSON = {}
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        #: The webhook queues (see :func:`webhook_queue`) with an update in flight.
        self._webhook_busy: set[str] = set()
        self._webhook_last_error: tuple[int, str] | None = None

        self._chats: dict[ChatKey, JSON] = {}
        self._users: dict[int, JSON] = {}
        self._members: dict[tuple[ChatKey, int], JSON] = {}
        self._messages: dict[tuple[ChatKey, int], JSON] = {}
        self._next_message_id: dict[ChatKey, int] = {}
        self._media_group_ids = itertools.count(13_000_000_000_000_000)
        self._callback_ids: set[str] = set()
        self._answered_callbacks: dict[str, JSON] = {}
        self._files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._file_counter = itertools.count(1)
        self._commands: dict[tuple[str, str], list[JSON]] = {}
        self._blocked: dict[ChatKey, str] = {}
        self._injections: list[_Injection] = []
        self._delays: list[_Delay] = []
        #: Bot messages sent with a reply keyboard or force_reply: Telegram refuses to edit them.
        self._not_editable: set[tuple[ChatKey, int]] = set()
        self._overrides: dict[str, MethodHandler] = {}
        self._flood = _FloodGate(self.flood_limits)

        self._handlers: dict[str, MethodHandler] = {
            "getMe": self._get_me,
            "logOut": self._true,
            "close": self._true,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getMyCommands": self._get_my_commands,
            "setMyDescription": self._true,
            "setMyShortDescription": self._true,
            "setMyName": self._true,
            "setChatMenuButton": self._true,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_media_method("photo"),
            "sendVideo": self._send_media_method("video"),
            "sendDocument": self._send_media_method("document"),
            "sendVoice": self._send_media_method("voice"),
            "sendAudio": self._send_media_method("audio"),
            "sendAnimation": self._send_media_method("animation"),
            "sendSticker": self._send_media_method("sticker"),
            "sendVideoNote": self._send_media_method("video_note"),
            "sendLocation": self._send_location,
            "sendVenue": self._send_venue,
            "sendContact": self._send_contact,
            "sendMediaGroup": self._send_media_group,
            "copyMessage": self._copy_message,
            "copyMessages": self._copy_messages,
            "forwardMessage": self._forward_message,
            "forwardMessages": self._forward_messages,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "getFile": self._get_file,
            "getChat": self._get_chat,
            "getChatMember": self._get_chat_member,
            "leaveChat": self._true,
            "pinChatMessage": self._pin_chat_message,
            "unpinChatMessage": self._true,
            "unpinAllChatMessages": self._true,
            "setMessageReaction": self._true,
        }

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._closing = False
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._kick_webhook()

    async def stop(self) -> None:
        self._closing = True
        self._notify_updates()
        for task in list(self._webhook_tasks):
            task.cancel()
        for task in list(self._webhook_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._webhook_tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BotAPIStandIn:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("BotAPIStandIn is not started")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.root_url}/file/bot"

    @property
    def bot_user(self) -> JSON:
        """The ``getMe`` answer (``id`` follows the token used; default token ``123456:TEST``)."""
        return dict(self._bot_user)

    def application_builder(self, token: str = DEFAULT_TOKEN) -> Any:
        """``Application.builder()`` pointed at this server (token, base_url, base_file_url)."""
        from telegram.ext import Application

        return (
            Application.builder()
            .token(token)
            .base_url(self.base_url)
            .base_file_url(self.base_file_url)
        )

    def bot(self, token: str = DEFAULT_TOKEN) -> Any:
        """A plain ``telegram.Bot`` pointed at this server."""
        from telegram import Bot

        return Bot(token, base_url=self.base_url, base_file_url=self.base_file_url)

    # ---------------------------------------------------------------- recorded calls

    def calls_for(self, method: str, *, ok_only: bool = False) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method and (c.ok or not ok_only)]

    def sent_to(self, chat_id: ChatKey) -> list[ApiCall]:
        """Successful message-creating calls (send*, copy*, forward*) to ``chat_id``."""
        return [
            c for c in self.calls if c.method in SENDING_METHODS and c.ok and c.chat_id == chat_id
        ]

    def texts_to(self, chat_id: ChatKey) -> list[str]:
        """``text``/``caption`` (as sent, markup included) of ``sent_to(chat_id)``."""
        texts: list[str] = []
        for call in self.sent_to(chat_id):
            if call.text is not None:
                texts.append(call.text)
            elif call.method == "sendMediaGroup":
                for item in call.params.get("media") or []:
                    if isinstance(item, dict) and isinstance(item.get("caption"), str):
                        texts.append(item["caption"])
        return texts

    def clear(self) -> None:
        """Forget recorded calls, webhook deliveries and stats (chat/message state is kept)."""
        self.calls.clear()
        self.webhook_deliveries.clear()
        self.stats = StandInStats()

    async def wait_for(
        self,
        predicate: Predicate,
        timeout: float = 20.0,  # noqa: ASYNC109 - part of the helper's contract
        *,
        start: int = 0,
    ) -> ApiCall:
        """Wait until a recorded call (index >= ``start``) satisfies ``predicate``; return it."""
        found: list[ApiCall] = []

        def check() -> bool:
            for call in self.calls[start:]:
                if predicate(call):
                    found.append(call)
                    return True
            return False

        await self._wait_until(check, timeout, "a call matching the predicate")
        return found[0]

    async def wait_calls(
        self,
        method: str,
        count: int = 1,
        timeout: float = 20.0,  # noqa: ASYNC109 - part of the helper's contract
        *,
        ok_only: bool = False,
    ) -> list[ApiCall]:
        """Wait until at least ``count`` calls of ``method`` were recorded; return them all."""
        await self._wait_until(
            lambda: len(self.calls_for(method, ok_only=ok_only)) >= count,
            timeout,
            f"{count} x {method}",
        )
        return self.calls_for(method, ok_only=ok_only)

    async def _wait_until(self, condition: Callable[[], bool], limit: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "\n  ".join(c.summary() for c in self.calls[-15:]) or "(none)"
                raise TimeoutError(
                    f"timed out after {limit}s waiting for {what}; recent calls:\n  {recent}"
                )
            event = self._calls_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _record(self, call: ApiCall) -> None:
        self.calls.append(call)
        event, self._calls_changed = self._calls_changed, asyncio.Event()
        event.set()

    # ---------------------------------------------------------------- test hooks

    def push_update(self, update: JSON) -> int:
        """Queue an update for getUpdates (or the webhook); returns its ``update_id``.

        The dict is copied. A missing ``update_id``, or one not above the last queued id, is
        replaced by the next id, as Telegram's ids only grow.
        """
        update = copy.deepcopy(update)
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or update_id <= self._last_update_id:
            update_id = self._last_update_id + 1
            update["update_id"] = update_id
        self._last_update_id = update_id
        self._observe_update(update)
        self._updates.append(update)
        self._notify_updates()
        self._kick_webhook()
        return update_id

    def push_raw_update(self, update: JSON) -> int:
        """Queue an update verbatim, however malformed its body (``"message": 5``, a ``photo``
        without its fields...), as a Bot API that a library cannot parse would send it.

        Unlike :meth:`push_update`, nothing in it is observed (no chat, user or message is
        learnt from it). Only a missing or non-integer ``update_id`` is replaced by the next id,
        since an update without one could never be confirmed.
        """
        update = copy.deepcopy(update)
        update_id = update.get("update_id")
        if isinstance(update_id, bool) or not isinstance(update_id, int):
            update_id = self._last_update_id + 1
            update["update_id"] = update_id
        self._last_update_id = max(self._last_update_id, update_id)
        self._updates.append(update)
        self._notify_updates()
        self._kick_webhook()
        return update_id

    @property
    def pending_updates(self) -> list[JSON]:
        """Updates queued and not yet confirmed by a getUpdates ``offset`` (or webhook 2xx)."""
        return copy.deepcopy(self._updates)

    def add_file(
        self,
        content: bytes,
        file_path_suffix: str = "jpg",
        *,
        kind: str | None = None,
        file_name: str | None = None,
        mime_type: str | None = None,
    ) -> tuple[str, str]:
        """Register a downloadable file; returns ``(file_id, file_unique_id)``."""
        stored = self._store_file(
            content, file_path_suffix, kind=kind, file_name=file_name, mime_type=mime_type
        )
        return stored.file_id, stored.file_unique_id

    def file_content(self, file_id: str) -> bytes | None:
        stored = self._files.get(file_id)
        return None if stored is None else stored.content

    def fail_next(
        self,
        method: str,
        error_code: int = 400,
        description: str | None = None,
        retry_after: int | None = None,
        count: int = 1,
        *,
        chat_id: ChatKey | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``method`` ("*" = any, getUpdates included) with
        an error, optionally only calls to ``chat_id``.

        ``retry_after`` adds ``parameters.retry_after`` (a 429 defaults to 1). Without a
        ``description`` Telegram's usual one for the code is used (400 "chat not found", 403
        "bot was blocked by the user", 429 "Too Many Requests: retry after N", ...).
        """
        if error_code == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            description = {
                400: "Bad Request: chat not found",
                401: "Unauthorized",
                403: "Forbidden: bot was blocked by the user",
                404: "Not Found",
                409: "Conflict: terminated by other getUpdates request; make sure that only "
                "one bot instance is running",
                429: f"Too Many Requests: retry after {retry_after}",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(error_code, f"Error {error_code}")
        self._injections.append(
            _Injection(method, error_code, description, retry_after, count, chat_id)
        )

    def delay_response(
        self, method: str, seconds: float, count: int = 1, *, chat_id: ChatKey | None = None
    ) -> None:
        """Carry out the next ``count`` calls of ``method`` ("*" = any) at once, optionally only
        those to ``chat_id``, but hold their answers back for ``seconds``: a client with a
        shorter read timeout gives up although the message was created."""
        self._delays.append(_Delay(method, seconds, count, chat_id))

    def drop_connection(
        self, method: str, count: int = 1, *, chat_id: ChatKey | None = None
    ) -> None:
        """Carry out the next ``count`` calls of ``method`` ("*" = any), optionally only those
        to ``chat_id``, then close the connection instead of answering: the client sees the
        connection lost after its request went out (a reset, a proxy that died), although the
        message was created."""
        self._delays.append(_Delay(method, 0.0, count, chat_id, drop=True))

    def block_chat(
        self, chat_id: ChatKey, description: str = "Forbidden: bot was blocked by the user"
    ) -> None:
        """Every send/edit to ``chat_id`` answers 403 until ``unblock_chat``."""
        self._blocked[chat_id] = description

    def unblock_chat(self, chat_id: ChatKey) -> None:
        self._blocked.pop(chat_id, None)

    def set_handler(self, method: str, handler: MethodHandler | None) -> None:
        """Override (or with ``None`` restore) a method. ``handler(call)`` returns the result
        (may be a coroutine) or raises ``ApiError``."""
        if handler is None:
            self._overrides.pop(method, None)
        else:
            self._overrides[method] = handler

    def add_chat(self, chat: JSON) -> None:
        """Register a Chat object (``id``, ``type``, ``title``/``first_name`` ...)."""
        self._chats[chat["id"]] = dict(chat)

    def add_user(self, user: JSON) -> None:
        self._users[int(user["id"])] = dict(user)

    def set_chat_member(self, chat_id: ChatKey, user: JSON | int, status: str = "member") -> None:
        user_obj = self._user_obj(user) if isinstance(user, int) else dict(user)
        self._members[(chat_id, int(user_obj["id"]))] = self._member_obj(user_obj, status)

    def allocate_message_id(self, chat_id: ChatKey) -> int:
        """Reserve the next message id in a chat (user and bot messages share the sequence)."""
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def message(self, chat_id: ChatKey, message_id: int) -> JSON | None:
        stored = self._messages.get((chat_id, message_id))
        return copy.deepcopy(stored) if stored is not None else None

    def messages(self, chat_id: ChatKey) -> list[JSON]:
        """The chat as it now looks (after edits and deletes), oldest first."""
        found = [m for (chat, _), m in self._messages.items() if chat == chat_id]
        return copy.deepcopy(sorted(found, key=lambda m: m["message_id"]))

    def commands(self, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        return copy.deepcopy(self._commands.get((self._scope_key(scope), language_code), []))

    @property
    def webhook(self) -> JSON:
        """What ``setWebhook`` registered (empty when no webhook)."""
        return dict(self._webhook)

    def callback_answer(self, callback_query_id: str) -> JSON | None:
        return self._answered_callbacks.get(callback_query_id)

    async def deliver_webhook(
        self,
        url: str | None,
        update: JSON,
        secret_token: str | _Registered | None = USE_REGISTERED_SECRET,
    ) -> int:
        """POST one update to ``url`` (default: the registered webhook) and return the HTTP status.

        ``secret_token`` defaults to the one registered with ``setWebhook``; ``None`` sends no
        header. The update is not queued (use ``push_update`` for Telegram-like delivery).
        """
        update = copy.deepcopy(update)
        if not isinstance(update.get("update_id"), int):
            self._last_update_id += 1
            update["update_id"] = self._last_update_id
        self._observe_update(update)
        body = json.dumps(update, ensure_ascii=False).encode("utf-8")
        return await self.deliver_webhook_raw(url, body, secret_token)

    async def deliver_webhook_raw(
        self,
        url: str | None,
        body: bytes,
        secret_token: str | _Registered | None = USE_REGISTERED_SECRET,
        content_type: str = "application/json",
    ) -> int:
        """POST raw bytes (e.g. invalid JSON) to a webhook URL; return the HTTP status."""
        target = url or self._webhook.get("url")
        if not target:
            raise RuntimeError("no url given and no webhook registered")
        secret: str | None
        if isinstance(secret_token, _Registered):
            secret = self._webhook.get("secret_token")
        else:
            secret = secret_token
        status, error = await self._post_webhook(str(target), body, secret, content_type)
        if status is None:
            raise ConnectionError(f"webhook delivery to {target} failed: {error}")
        return status

    # ---------------------------------------------------------------- HTTP plumbing

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        at = self.clock()
        path = request.path
        file_match = _FILE_PATH_RE.match(path)
        if file_match is not None and request.method in ("GET", "HEAD"):
            return self._serve_file(file_match.group("token"), file_match.group("path"))
        bot_match = _BOT_PATH_RE.match(path)
        if bot_match is None or _TOKEN_RE.match(bot_match.group("token")) is None:
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
            )
        token = bot_match.group("token")
        raw_method = bot_match.group("method")
        try:
            params, uploads = await self._read_params(request)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {"ok": False, "error_code": 413, "description": "Request Entity Too Large"},
                status=413,
            )
        except ValueError as exc:
            return web.json_response(
                {"ok": False, "error_code": 400, "description": f"Bad Request: {exc}"},
                status=400,
            )
        call = ApiCall(
            method=self._canonical_method(raw_method),
            params=params,
            files={name: up.content for name, up in uploads.items()},
            at=at,
            token=token,
            uploads=uploads,
            http_method=request.method,
            content_type=request.content_type,
        )
        try:
            result = await self._execute(call)
            body: JSON = {"ok": True, "result": result}
            description = _DESCRIPTIONS.get(call.method)
            if description is not None and result is True:
                body["description"] = description(self)
            status = 200
        except ApiError as err:
            body = err.payload()
            status = err.error_code
        call.status = status
        call.response = body
        self._record(call)
        delay = self._take_delay(call)
        if delay is not None and delay.drop:
            self.stats.dropped_connections += 1
            if request.transport is not None:
                request.transport.abort()  # what follows is written nowhere
            return web.Response(status=204)
        if delay is not None and delay.seconds > 0:
            self.stats.delayed_responses += 1
            await asyncio.sleep(delay.seconds)
        return web.json_response(body, status=status)

    def _take_delay(self, call: ApiCall) -> _Delay | None:
        for delay in self._delays:
            if delay.remaining > 0 and delay.matches(call):
                delay.remaining -= 1
                self._delays = [d for d in self._delays if d.remaining > 0]
                return delay
        return None

    def _serve_file(self, token: str, file_path: str) -> web.StreamResponse:
        stored = self._files_by_path.get(file_path)
        if _TOKEN_RE.match(token) is None or stored is None or stored.content is None:
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
            )
        return web.Response(
            body=stored.content, content_type=stored.mime_type or "application/octet-stream"
        )

    async def _read_params(self, request: web.Request) -> tuple[JSON, dict[str, UploadedFile]]:
        params: JSON = {}
        uploads: dict[str, UploadedFile] = {}
        for key, query_value in request.query.items():
            params[key] = _decode_form_value(key, query_value)
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                raw = await request.read()
                if raw.strip():
                    try:
                        data = json.loads(raw)
                    except ValueError as exc:
                        raise ValueError("can't parse JSON object") from exc
                    if not isinstance(data, dict):
                        raise ValueError("JSON object expected")
                    params.update(data)
            elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        content = value.file.read()
                        uploads[key] = UploadedFile(
                            name=key,
                            content=content,
                            filename=value.filename,
                            content_type=value.content_type,
                        )
                    elif isinstance(value, bytes | bytearray):
                        params[key] = _decode_form_value(key, bytes(value).decode("utf-8"))
                    else:
                        params[key] = _decode_form_value(key, value)
        for key in list(params):
            value = params[key]
            if key in _ID_PARAMS and isinstance(value, str) and _INT_RE.match(value):
                params[key] = int(value)
            elif key in _JSON_PARAMS and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    params[key] = json.loads(value)
        return params, uploads

    def _canonical_method(self, raw: str) -> str:
        lowered = raw.lower()
        for name in itertools.chain(self._overrides, self._handlers):
            if name.lower() == lowered:
                return name
        return raw

    async def _execute(self, call: ApiCall) -> Any:
        for injection in self._injections:
            if injection.remaining > 0 and injection.matches(call):
                injection.remaining -= 1
                self._injections = [i for i in self._injections if i.remaining > 0]
                self.stats.injected_failures += 1
                parameters = (
                    {"retry_after": injection.retry_after}
                    if injection.retry_after is not None
                    else None
                )
                raise ApiError(injection.error_code, injection.description, parameters)

        handler = self._overrides.get(call.method) or self._handlers.get(call.method)
        if handler is None:
            raise ApiError(404, "Not Found: method not found")

        sending = call.method in SENDING_METHODS
        chat = call.chat_id
        if (
            (sending or call.method in _EDIT_METHODS)
            and chat is not None
            and chat in self._blocked
        ):
            raise ApiError(403, self._blocked[chat])

        weight = self._message_weight(call) if sending else 0
        now = self.clock()
        if sending and self.enforce_flood_limits and chat is not None:
            retry_after = self._flood.check(chat, weight, now)
            if retry_after is not None:
                self.stats.rate_limited += 1
                raise ApiError(
                    429,
                    f"Too Many Requests: retry after {retry_after}",
                    {"retry_after": retry_after},
                )

        result = handler(call)
        if inspect.isawaitable(result):
            result = await result

        if sending and chat is not None:
            self.stats.sent += weight
            self.stats.sent_per_chat[chat] += weight
            if self.enforce_flood_limits:
                self._flood.commit(chat, weight, now)
        return result

    @staticmethod
    def _message_weight(call: ApiCall) -> int:
        if call.method == "sendMediaGroup":
            media = call.params.get("media")
            return max(1, len(media)) if isinstance(media, list) else 1
        if call.method in ("copyMessages", "forwardMessages"):
            ids = call.params.get("message_ids")
            return max(1, len(ids)) if isinstance(ids, list) else 1
        return 1

    # ---------------------------------------------------------------- state helpers

    def _bot_user_for(self, call: ApiCall | None) -> JSON:
        user = dict(self._bot_user)
        if call is not None:
            match = _TOKEN_RE.match(call.token)
            if match is not None:
                user["id"] = int(match.group("bot_id"))
        return user

    def _bot_from(self, call: ApiCall | None) -> JSON:
        user = self._bot_user_for(call)
        return {k: user[k] for k in ("id", "is_bot", "first_name", "username") if k in user}

    def _user_obj(self, user_id: int) -> JSON:
        if user_id in self._users:
            return dict(self._users[user_id])
        return {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}

    def _chat_obj(self, chat_id: Any) -> JSON:
        key = self._resolve_chat(chat_id)
        return dict(self._chats[key])

    def _resolve_chat(self, chat_id: Any) -> ChatKey:
        if chat_id is None or chat_id == "":
            raise bad_request("chat_id is empty")
        if isinstance(chat_id, bool) or not isinstance(chat_id, int | str):
            raise bad_request("chat not found")
        if isinstance(chat_id, str):
            if _INT_RE.match(chat_id):
                chat_id = int(chat_id)
            else:
                username = chat_id.removeprefix("@").lower()
                for key, known in self._chats.items():
                    if str(known.get("username", "")).lower() == username:
                        return key
                if self.strict_chats or not chat_id.startswith("@"):
                    raise bad_request("chat not found")
                new_id = -1_009_000_000_000 - len(self._chats)
                self._chats[new_id] = {
                    "id": new_id,
                    "type": "channel",
                    "title": username,
                    "username": username,
                }
                return new_id
        if chat_id in self._chats:
            return chat_id
        if self.strict_chats or chat_id == 0:
            raise bad_request("chat not found")
        chat: JSON
        if chat_id > 0:
            user = self._user_obj(chat_id)
            chat = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
            for key in ("last_name", "username"):
                if key in user:
                    chat[key] = user[key]
        elif chat_id <= -1_000_000_000_000:
            chat = {"id": chat_id, "type": "supergroup", "title": f"Group {chat_id}"}
        else:
            chat = {"id": chat_id, "type": "group", "title": f"Group {chat_id}"}
        self._chats[chat_id] = chat
        return chat_id

    def _observe_message(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        chat = message.get("chat")
        if isinstance(chat, dict) and isinstance(chat.get("id"), int):
            known = self._chats.get(chat["id"], {})
            self._chats[chat["id"]] = {**known, **chat}
            message_id = message.get("message_id")
            if isinstance(message_id, int) and message_id > 0:
                self._messages[(chat["id"], message_id)] = copy.deepcopy(message)
                self._next_message_id[chat["id"]] = max(
                    self._next_message_id.get(chat["id"], 1), message_id + 1
                )
        sender = message.get("from")
        if (
            isinstance(sender, dict)
            and isinstance(sender.get("id"), int)
            and not sender.get("is_bot")
        ):
            self._users[sender["id"]] = dict(sender)
        self._observe_message(message.get("reply_to_message"))

    def _observe_update(self, update: JSON) -> None:
        for key in _MESSAGE_UPDATE_KEYS:
            self._observe_message(update.get(key))
        query = update.get("callback_query")
        if isinstance(query, dict):
            if isinstance(query.get("id"), str):
                self._callback_ids.add(query["id"])
            sender = query.get("from")
            if isinstance(sender, dict) and isinstance(sender.get("id"), int):
                self._users[sender["id"]] = dict(sender)
            self._observe_message(query.get("message"))
        for key in ("my_chat_member", "chat_member", "chat_join_request"):
            event = update.get(key)
            if isinstance(event, dict):
                chat = event.get("chat")
                if isinstance(chat, dict) and isinstance(chat.get("id"), int):
                    self._chats[chat["id"]] = {**self._chats.get(chat["id"], {}), **chat}

    def _store_file(
        self,
        content: bytes | None,
        suffix: str,
        *,
        kind: str | None = None,
        file_name: str | None = None,
        mime_type: str | None = None,
    ) -> StoredFile:
        n = next(self._file_counter)
        folder = {
            "photo": "photos",
            "video": "videos",
            "voice": "voice",
            "audio": "music",
            "animation": "animations",
            "sticker": "stickers",
            "video_note": "video_notes",
        }.get(kind or "", "documents")
        if kind is None and suffix.lower() in ("jpg", "jpeg", "png", "webp"):
            folder = "photos"
        suffix = suffix.lstrip(".") or "bin"
        file_path = f"{folder}/file_{n}.{suffix}"
        prefix = {"photo": "AgACAgIAAxkBAAI", "sticker": "CAACAgIAAxkBAAI"}.get(
            kind or "", "BQACAgIAAxkBAAI"
        )
        stored = StoredFile(
            file_id=f"{prefix}{n:05d}{uuid.uuid4().hex[:24]}",
            file_unique_id=f"AQAD{n:04d}{uuid.uuid4().hex[:8]}",
            content=content,
            file_path=file_path,
            kind=kind,
            file_name=file_name,
            mime_type=mime_type or _guess_mime(suffix),
        )
        self._files[stored.file_id] = stored
        self._files_by_path[file_path] = stored
        return stored

    @staticmethod
    def _scope_key(scope: Any) -> str:
        if not isinstance(scope, dict):
            scope = {"type": "default"}
        return json.dumps(scope, sort_keys=True)

    def _member_obj(self, user: JSON, status: str) -> JSON:
        member: JSON = {"status": status, "user": user}
        if status == "administrator":
            member.update(
                {
                    "can_be_edited": False,
                    "is_anonymous": False,
                    "can_manage_chat": True,
                    "can_delete_messages": True,
                    "can_manage_video_chats": False,
                    "can_restrict_members": False,
                    "can_promote_members": False,
                    "can_change_info": False,
                    "can_invite_users": True,
                    "can_post_stories": False,
                    "can_edit_stories": False,
                    "can_delete_stories": False,
                }
            )
        elif status == "creator":
            member["is_anonymous"] = False
        elif status == "kicked":
            member["until_date"] = 0
        return member

    # ---------------------------------------------------------------- updates and webhook

    def _notify_updates(self) -> None:
        event, self._updates_changed = self._updates_changed, asyncio.Event()
        event.set()

    def _allowed(self, update: JSON) -> bool:
        kinds = [k for k in update if k != "update_id"]
        if not kinds:
            return False
        if self._allowed_updates:
            return kinds[0] in self._allowed_updates
        return kinds[0] not in _DEFAULT_EXCLUDED_UPDATES

    def _take_updates(self, limit: int) -> list[JSON]:
        kept = [u for u in self._updates if self._allowed(u)]
        self._updates = kept  # Telegram never delivers updates of types not allowed
        return copy.deepcopy(kept[:limit])

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

    async def _get_updates(self, call: ApiCall) -> list[JSON]:
        if self._webhook.get("url"):
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        params = call.params
        offset = _as_int(params.get("offset"), 0)
        limit = min(100, max(1, _as_int(params.get("limit"), 100)))
        timeout = max(0.0, _as_float(params.get("timeout"), 0.0))
        if "allowed_updates" in params:
            allowed = params["allowed_updates"]
            if isinstance(allowed, list):
                self._allowed_updates = frozenset(str(a) for a in allowed) or None
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify_updates()  # wakes an older poll, which then answers 409
        self._confirm(offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running",
                )
            batch = self._take_updates(limit)
            remaining = deadline - loop.time()
            if batch or self._closing or remaining <= 0:
                return batch
            event = self._updates_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _set_webhook(self, call: ApiCall) -> bool:
        url = call.params.get("url", "")
        if not isinstance(url, str):
            raise bad_request("invalid webhook URL specified")
        secret = call.params.get("secret_token")
        if secret is not None and not _SECRET_RE.match(str(secret)):
            raise bad_request("secret token contains unallowed characters")
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        if not url:
            self._webhook = {}
            return True
        if not url.startswith(("http://", "https://")):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        allowed = call.params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(str(a) for a in allowed) or None
        self._webhook = {
            "url": url,
            "secret_token": str(secret) if secret is not None else None,
            "max_connections": _as_int(call.params.get("max_connections"), 40),
            "allowed_updates": allowed if isinstance(allowed, list) else None,
        }
        self._webhook_last_error = None
        self._poll_generation += 1
        self._notify_updates()
        self._kick_webhook()
        return True

    def _delete_webhook(self, call: ApiCall) -> bool:
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        self._webhook = {}
        return True

    def _get_webhook_info(self, call: ApiCall) -> JSON:
        info: JSON = {
            "url": self._webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self._webhook.get("url"):
            info["max_connections"] = self._webhook["max_connections"]
            info["ip_address"] = "127.0.0.1"
            if self._webhook.get("allowed_updates") is not None:
                info["allowed_updates"] = self._webhook["allowed_updates"]
            if self._webhook_last_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_last_error
        return info

    def _kick_webhook(self) -> None:
        if self._runner is None or self._closing or not self._webhook.get("url"):
            return
        self._webhook_tasks = {task for task in self._webhook_tasks if not task.done()}
        width = min(self.webhook_connections, max(1, int(self._webhook["max_connections"])))
        waiting = len(self._updates) - len(self._webhook_busy)
        loop = asyncio.get_running_loop()
        for _ in range(min(width - len(self._webhook_tasks), max(waiting, 1))):
            task = loop.create_task(self._webhook_loop())
            self._webhook_tasks.add(task)

    def _next_for_webhook(self) -> tuple[str, JSON] | None:
        """The oldest queued update whose webhook queue has nothing in flight (a copy)."""
        kept = [u for u in self._updates if self._allowed(u)]
        self._updates = kept  # Telegram never delivers updates of types not allowed
        for update in kept:
            queue = webhook_queue(update)
            if queue not in self._webhook_busy:
                return queue, copy.deepcopy(update)
        return None

    async def _webhook_loop(self) -> None:
        while not self._closing and self._webhook.get("url"):
            found = self._next_for_webhook()
            if found is None:
                return
            queue, update = found
            update_id = update["update_id"]
            body = json.dumps(update, ensure_ascii=False).encode("utf-8")
            self._webhook_busy.add(queue)
            try:
                status, error = await self._post_webhook(
                    self._webhook["url"], body, self._webhook.get("secret_token")
                )
                if status is not None and 200 <= status < 300:
                    self._updates = [u for u in self._updates if u["update_id"] != update_id]
                    continue
                message = error or f"Wrong response from the webhook: {status}"
                self._webhook_last_error = (int(time.time()), message)
                # The update stays first in its queue, which waits (the others go on).
                await asyncio.sleep(self.webhook_retry_delay)
            finally:
                self._webhook_busy.discard(queue)

    async def _post_webhook(
        self, url: str, body: bytes, secret: str | None, content_type: str = "application/json"
    ) -> tuple[int | None, str | None]:
        if self._session is None:
            raise RuntimeError("BotAPIStandIn is not started")
        headers = {"Content-Type": content_type}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"Connection failed: {exc!r}"
        self.webhook_deliveries.append(
            WebhookDelivery(
                url=url,
                body=body,
                secret_token=secret,
                status=status,
                at=self.clock(),
                error=error,
            )
        )
        return status, error

    # ---------------------------------------------------------------- simple methods

    def _true(self, call: ApiCall) -> bool:
        return True

    def _get_me(self, call: ApiCall) -> JSON:
        return self._bot_user_for(call)

    def _set_my_commands(self, call: ApiCall) -> bool:
        commands = call.params.get("commands")
        if not isinstance(commands, list):
            raise bad_request('parameter "commands" is required')
        if len(commands) > 100:
            raise bad_request("too many commands specified")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_RE.match(str(command.get("command"))):
                raise bad_request("BOT_COMMAND_INVALID")
            description = command.get("description")
            if not isinstance(description, str) or not 1 <= len(description) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        key = (
            self._scope_key(call.params.get("scope")),
            str(call.params.get("language_code", "")),
        )
        if commands:
            self._commands[key] = copy.deepcopy(commands)
        else:
            self._commands.pop(key, None)
        return True

    def _delete_my_commands(self, call: ApiCall) -> bool:
        key = (
            self._scope_key(call.params.get("scope")),
            str(call.params.get("language_code", "")),
        )
        self._commands.pop(key, None)
        return True

    def _get_my_commands(self, call: ApiCall) -> list[JSON]:
        key = (
            self._scope_key(call.params.get("scope")),
            str(call.params.get("language_code", "")),
        )
        return copy.deepcopy(self._commands.get(key, []))

    def _send_chat_action(self, call: ApiCall) -> bool:
        self._resolve_chat(call.params.get("chat_id"))
        if call.params.get("action") not in _CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    def _get_chat(self, call: ApiCall) -> JSON:
        chat = self._chat_obj(call.params.get("chat_id"))
        chat.setdefault("accent_color_id", 0)
        chat.setdefault("max_reaction_count", 11)
        chat.setdefault(
            "accepted_gift_types",
            {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        )
        return chat

    def _get_chat_member(self, call: ApiCall) -> JSON:
        key = self._resolve_chat(call.params.get("chat_id"))
        user_id = _as_int(call.params.get("user_id"), 0)
        if user_id <= 0:
            raise bad_request("invalid user_id specified")
        if (key, user_id) in self._members:
            return copy.deepcopy(self._members[(key, user_id)])
        if user_id == self._bot_user_for(call)["id"]:
            private = self._chats[key].get("type") == "private"
            return self._member_obj(self._bot_from(call), "member" if private else "administrator")
        return self._member_obj(self._user_obj(user_id), "member")

    def _pin_chat_message(self, call: ApiCall) -> bool:
        key = self._resolve_chat(call.params.get("chat_id"))
        if (key, _as_int(call.params.get("message_id"), 0)) not in self._messages:
            raise bad_request("message to pin not found")
        return True

    def _get_file(self, call: ApiCall) -> JSON:
        stored = self._files.get(str(call.params.get("file_id", "")))
        if stored is None:
            raise bad_request("invalid file_id")
        if stored.content is not None and len(stored.content) > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        result: JSON = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
        if stored.content is not None:
            result["file_size"] = len(stored.content)
            result["file_path"] = stored.file_path
        return result

    def _answer_callback_query(self, call: ApiCall) -> bool:
        query_id = call.params.get("callback_query_id")
        if not isinstance(query_id, str) or query_id not in self._callback_ids:
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        text = call.params.get("text")
        if isinstance(text, str) and len(text) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self._answered_callbacks[query_id] = dict(call.params)
        return True

    # ---------------------------------------------------------------- message creation

    def _format(
        self, text: Any, parse_mode: Any, entities: Any, *, caption: bool
    ) -> tuple[str, list[JSON] | None]:
        text = "" if text is None else str(text)
        mode = str(parse_mode or "").lower()
        plain_entities: list[JSON] | None = None
        try:
            if mode == "html":
                plain, plain_entities = parse_html(text)
            elif mode == "markdownv2":
                plain = parse_markdown_v2(text)
            elif mode == "markdown":
                plain = re.sub(r"[*_`\[\]]", "", text)
            elif mode:
                raise bad_request("unsupported parse_mode")
            else:
                plain = text
                plain_entities = entities if isinstance(entities, list) else None
        except _ParseError as exc:
            raise bad_request(f"can't parse entities: {exc}") from exc
        limit = MAX_CAPTION_LENGTH if caption else MAX_TEXT_LENGTH
        if _utf16_len(plain) > limit:
            raise bad_request("message caption is too long" if caption else "message is too long")
        return plain, plain_entities or None

    @staticmethod
    def _check_reply_markup(markup: Any) -> JSON | None:
        """Validate; return the markup to echo in the Message (inline keyboards only)."""
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise bad_request("can't parse reply keyboard markup JSON object")
        rows = markup.get("inline_keyboard")
        if rows is None:
            return None
        if not isinstance(rows, list):
            raise bad_request(_KEYBOARD_NOT_ARRAYS)
        for row in rows:
            if not isinstance(row, list):
                raise bad_request(_KEYBOARD_NOT_ARRAYS)
            for button in row:
                if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                    raise bad_request("can't parse inline keyboard button: Text is not specified")
                if not _BUTTON_ACTIONS.intersection(button):
                    raise bad_request(
                        "can't parse inline keyboard button: Text buttons are unallowed in the "
                        "inline keyboard"
                    )
                data = button.get("callback_data")
                if data is not None and (
                    not isinstance(data, str)
                    or not 1 <= len(data.encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES
                ):
                    raise bad_request("BUTTON_DATA_INVALID")
        return copy.deepcopy(markup) if any(rows) else None

    def _new_message(self, call: ApiCall, content: JSON) -> JSON:
        """Create, store and return a bot message in ``call``'s chat with ``content``."""
        params = call.params
        key = self._resolve_chat(params.get("chat_id"))
        chat = dict(self._chats[key])
        markup = self._check_reply_markup(params.get("reply_markup"))
        reply_to = self._reply_target(key, params)
        message: JSON = {
            "message_id": 0,
            "from": self._bot_from(call),
            "chat": chat,
            "date": int(time.time()),
        }
        thread_id = params.get("message_thread_id")
        if isinstance(thread_id, int) and chat.get("type") == "supergroup":
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if reply_to is not None:
            reply_copy = copy.deepcopy(reply_to)
            reply_copy.pop("reply_to_message", None)
            message["reply_to_message"] = reply_copy
        message.update(content)
        if markup is not None:
            message["reply_markup"] = markup
        if params.get("protect_content"):
            message["has_protected_content"] = True
        message["message_id"] = self.allocate_message_id(key)
        self._messages[(key, message["message_id"])] = copy.deepcopy(message)
        raw_markup = params.get("reply_markup")
        if isinstance(raw_markup, dict) and (
            raw_markup.get("keyboard") is not None or raw_markup.get("force_reply")
        ):
            self._not_editable.add((key, message["message_id"]))
        return message

    def _reply_target(self, key: ChatKey, params: JSON) -> JSON | None:
        reply = params.get("reply_parameters")
        message_id: Any = None
        allow_missing = bool(params.get("allow_sending_without_reply"))
        target_chat: Any = key
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            allow_missing = allow_missing or bool(reply.get("allow_sending_without_reply"))
            if reply.get("chat_id") is not None:
                target_chat = self._resolve_chat(reply.get("chat_id"))
        elif params.get("reply_to_message_id") is not None:
            message_id = params.get("reply_to_message_id")
        if message_id is None:
            return None
        found = self._messages.get((target_chat, _as_int(message_id, 0)))
        if found is None and not allow_missing:
            raise bad_request("message to be replied not found")
        return found

    def _text_content(self, params: JSON, *, caption_only: bool = False) -> JSON:
        key, ents_key = ("caption", "caption_entities") if caption_only else ("text", "entities")
        if key not in params:
            return {}
        plain, entities = self._format(
            params.get(key), params.get("parse_mode"), params.get(ents_key), caption=caption_only
        )
        content: JSON = {key: plain}
        if entities:
            content[ents_key] = entities
        return content

    def _send_message(self, call: ApiCall) -> JSON:
        self._resolve_chat(call.params.get("chat_id"))
        plain, entities = self._format(
            call.params.get("text"),
            call.params.get("parse_mode"),
            call.params.get("entities"),
            caption=False,
        )
        if not plain.strip():
            raise bad_request("message text is empty")
        content: JSON = {"text": plain}
        if entities:
            content["entities"] = entities
        return self._new_message(call, content)

    def _resolve_media(
        self, call: ApiCall, value: Any, part_name: str, kind: str
    ) -> tuple[StoredFile, UploadedFile | None]:
        upload: UploadedFile | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = call.uploads.get(value.removeprefix("attach://"))
            if upload is None:
                raise bad_request("file must be non-empty")
        elif value is None:
            upload = call.uploads.get(part_name)
            if upload is None:
                raise bad_request(f"there is no {kind} in the request")
        if upload is not None:
            if not upload.content:
                raise bad_request("file must be non-empty")
            if self.strict_media and kind == "photo" and _image_size(upload.content) is None:
                raise bad_request("IMAGE_PROCESS_FAILED")
            suffix = (
                (upload.filename or "").rsplit(".", 1)[-1]
                if "." in (upload.filename or "")
                else _default_suffix(kind)
            )
            stored = self._store_file(
                upload.content,
                suffix,
                kind=kind,
                file_name=upload.filename,
                mime_type=upload.content_type,
            )
            return stored, upload
        if not isinstance(value, str) or not value:
            raise bad_request("wrong file identifier/HTTP URL specified")
        known = self._files.get(value)
        if known is not None:
            if self.strict_media and known.kind and known.kind != kind:
                raise bad_request(f"can't use file of type {known.kind.title()} as {kind.title()}")
            return known, None
        if value.startswith(("http://", "https://")):
            return self._store_file(None, _default_suffix(kind), kind=kind), None
        raise bad_request("wrong file identifier/HTTP URL specified")

    def _media_object(self, kind: str, stored: StoredFile, params: JSON) -> Any:
        base: JSON = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
        if stored.file_size is not None:
            base["file_size"] = stored.file_size
        if kind == "photo":
            return self._photo_sizes(stored)
        duration = _as_int(params.get("duration"), 1)
        if kind in ("video", "animation"):
            obj = {
                **base,
                "width": _as_int(params.get("width"), 1280),
                "height": _as_int(params.get("height"), 720),
                "duration": duration,
            }
            obj["mime_type"] = stored.mime_type or "video/mp4"
            if stored.file_name:
                obj["file_name"] = stored.file_name
            return obj
        if kind == "video_note":
            return {**base, "length": _as_int(params.get("length"), 240), "duration": duration}
        if kind == "voice":
            return {**base, "duration": duration, "mime_type": stored.mime_type or "audio/ogg"}
        if kind == "audio":
            obj = {**base, "duration": duration, "mime_type": stored.mime_type or "audio/mpeg"}
            for key in ("title", "performer"):
                if isinstance(params.get(key), str):
                    obj[key] = params[key]
            if stored.file_name:
                obj["file_name"] = stored.file_name
            return obj
        if kind == "sticker":
            return {
                **base,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
            }
        obj = dict(base)
        if stored.file_name:
            obj["file_name"] = stored.file_name
        if stored.mime_type:
            obj["mime_type"] = stored.mime_type
        return obj

    def _photo_sizes(self, stored: StoredFile) -> list[JSON]:
        size = _image_size(stored.content) if stored.content else None
        width, height = size or (1280, 960)
        sizes: list[JSON] = []
        for limit in (90, 320, 800):
            if max(width, height) > limit:
                scale = limit / max(width, height)
                n = next(self._file_counter)
                sizes.append(
                    {
                        "file_id": f"{stored.file_id[:15]}{n:05d}{uuid.uuid4().hex[:24]}",
                        "file_unique_id": f"AQAD{n:04d}{uuid.uuid4().hex[:8]}",
                        "file_size": max(
                            1, (stored.file_size or 50_000) * limit // max(width, height) // 4
                        ),
                        "width": max(1, round(width * scale)),
                        "height": max(1, round(height * scale)),
                    }
                )
        largest: JSON = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "width": width,
            "height": height,
        }
        if stored.file_size is not None:
            largest["file_size"] = stored.file_size
        sizes.append(largest)
        return sizes

    def _send_media_method(self, kind: str) -> MethodHandler:
        def handler(call: ApiCall) -> JSON:
            self._resolve_chat(call.params.get("chat_id"))
            stored, _ = self._resolve_media(call, call.params.get(kind), kind, kind)
            content: JSON = {kind: self._media_object(kind, stored, call.params)}
            if kind == "animation":
                content["document"] = self._media_object("document", stored, call.params)
            if kind in _CAPTIONABLE:
                content.update(self._text_content(call.params, caption_only=True))
                for flag in ("has_spoiler", "show_caption_above_media"):
                    if call.params.get(flag):
                        content["has_media_spoiler" if flag == "has_spoiler" else flag] = True
            elif kind == "sticker" and isinstance(call.params.get("emoji"), str):
                content["sticker"]["emoji"] = call.params["emoji"]
            return self._new_message(call, content)

        return handler

    def _send_location(self, call: ApiCall) -> JSON:
        location = self._location(call.params)
        for key in ("horizontal_accuracy", "live_period", "heading", "proximity_alert_radius"):
            if call.params.get(key) is not None:
                location[key] = call.params[key]
        return self._new_message(call, {"location": location})

    def _location(self, params: JSON) -> JSON:
        latitude = _as_float(params.get("latitude"), math.nan)
        longitude = _as_float(params.get("longitude"), math.nan)
        if not -90 <= latitude <= 90 or not -180 <= longitude <= 180:
            raise bad_request("wrong latitude/longitude specified")
        return {"latitude": latitude, "longitude": longitude}

    def _send_venue(self, call: ApiCall) -> JSON:
        location = self._location(call.params)
        title, address = call.params.get("title"), call.params.get("address")
        if not title or not address:
            raise bad_request("VENUE_TITLE_INVALID" if not title else "VENUE_ADDRESS_INVALID")
        venue: JSON = {"location": location, "title": title, "address": address}
        for key in ("foursquare_id", "foursquare_type", "google_place_id", "google_place_type"):
            if call.params.get(key):
                venue[key] = call.params[key]
        return self._new_message(call, {"venue": venue, "location": location})

    def _send_contact(self, call: ApiCall) -> JSON:
        phone, first = call.params.get("phone_number"), call.params.get("first_name")
        if not phone or not first:
            raise bad_request("CONTACT_NAME_EMPTY" if phone else "PHONE_NUMBER_INVALID")
        contact: JSON = {"phone_number": phone, "first_name": first}
        for key in ("last_name", "vcard"):
            if call.params.get(key):
                contact[key] = call.params[key]
        return self._new_message(call, {"contact": contact})

    def _send_media_group(self, call: ApiCall) -> list[JSON]:
        self._resolve_chat(call.params.get("chat_id"))
        media = call.params.get("media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise bad_request("wrong number of media in the album")
        kinds = {item.get("type") for item in media if isinstance(item, dict)}
        if len(kinds & {"audio", "document"}) and len(kinds) > 1:
            raise bad_request("MEDIA_GROUP_INVALID")
        contents: list[JSON] = []
        for index, item in enumerate(media):
            if not isinstance(item, dict) or item.get("type") not in (
                "photo",
                "video",
                "document",
                "audio",
            ):
                raise bad_request(f"can't parse InputMedia {index}: media type is invalid")
            kind = str(item["type"])
            stored, _ = self._resolve_media(call, item.get("media"), f"media{index}", kind)
            content: JSON = {kind: self._media_object(kind, stored, item)}
            if "caption" in item:
                plain, entities = self._format(
                    item.get("caption"),
                    item.get("parse_mode"),
                    item.get("caption_entities"),
                    caption=True,
                )
                content["caption"] = plain
                if entities:
                    content["caption_entities"] = entities
            contents.append(content)
        group_id = str(next(self._media_group_ids))
        messages: list[JSON] = []
        for content in contents:
            content["media_group_id"] = group_id
            messages.append(self._new_message(call, content))
        return messages

    def _source_message(self, call: ApiCall, message_id: Any) -> JSON | None:
        key = self._resolve_chat(call.params.get("from_chat_id"))
        return self._messages.get((key, _as_int(message_id, 0)))

    def _copy_content(self, source: JSON) -> JSON:
        return {k: copy.deepcopy(source[k]) for k in _CONTENT_KEYS if k in source}

    def _copy_message(self, call: ApiCall) -> JSON:
        source = self._source_message(call, call.params.get("message_id"))
        if source is None:
            raise bad_request("message to copy not found")
        content = self._copy_content(source)
        if not content:
            raise bad_request("message can't be copied")
        if "caption" in call.params:
            content.pop("caption", None)
            content.pop("caption_entities", None)
            if any(k in content for k in _CAPTIONABLE):
                content.update(self._text_content(call.params, caption_only=True))
        message = self._new_message(call, content)
        return {"message_id": message["message_id"]}

    def _copy_messages(self, call: ApiCall) -> list[JSON]:
        ids = call.params.get("message_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise bad_request("message_ids must be a non-empty list")
        results: list[JSON] = []
        for message_id in sorted(_as_int(i, 0) for i in ids):
            source = self._source_message(call, message_id)
            if source is None or not self._copy_content(source):
                continue
            message = self._new_message(call, self._copy_content(source))
            results.append({"message_id": message["message_id"]})
        if not results:
            raise bad_request("messages to copy not found")
        return results

    def _forward_content(self, source: JSON) -> JSON:
        content = self._copy_content(source)
        sender = source.get("from")
        origin: JSON = {"type": "user", "sender_user": sender, "date": source.get("date", 0)}
        if sender is None and isinstance(source.get("chat"), dict):
            origin = {"type": "chat", "sender_chat": source["chat"], "date": source.get("date", 0)}
        content["forward_origin"] = origin
        return content

    def _forward_message(self, call: ApiCall) -> JSON:
        source = self._source_message(call, call.params.get("message_id"))
        if source is None:
            raise bad_request("message to forward not found")
        return self._new_message(call, self._forward_content(source))

    def _forward_messages(self, call: ApiCall) -> list[JSON]:
        ids = call.params.get("message_ids")
        if not isinstance(ids, list) or not ids:
            raise bad_request("message_ids must be a non-empty list")
        results: list[JSON] = []
        for message_id in sorted(_as_int(i, 0) for i in ids):
            source = self._source_message(call, message_id)
            if source is not None:
                message = self._new_message(call, self._forward_content(source))
                results.append({"message_id": message["message_id"]})
        if not results:
            raise bad_request("messages to forward not found")
        return results

    # ---------------------------------------------------------------- edits and deletes

    def _editable(self, call: ApiCall) -> tuple[tuple[ChatKey, int], JSON] | None:
        """The stored message an edit targets, or ``None`` for inline messages."""
        if call.params.get("inline_message_id"):
            return None
        key = self._resolve_chat(call.params.get("chat_id"))
        message_id = _as_int(call.params.get("message_id"), 0)
        stored = self._messages.get((key, message_id))
        if stored is None:
            raise bad_request("message to edit not found")
        if stored.get("from", {}).get("id") != self._bot_user_for(call)["id"]:
            raise bad_request("message can't be edited")
        if (key, message_id) in self._not_editable:
            raise bad_request("message can't be edited")
        return (key, message_id), stored

    def _apply_edit(self, call: ApiCall, changes: JSON) -> JSON | bool:
        target = self._editable(call)
        markup = self._check_reply_markup(call.params.get("reply_markup"))
        if target is None:
            return True
        key, stored = target
        updated = copy.deepcopy(stored)
        for name, value in changes.items():
            if value is None:
                updated.pop(name, None)
            else:
                updated[name] = value
        if markup is None:
            updated.pop("reply_markup", None)
        else:
            updated["reply_markup"] = markup
        compare = ("text", "entities", "caption", "caption_entities", "reply_markup")
        if all(updated.get(k) == stored.get(k) for k in compare):
            raise bad_request(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a content and reply markup of the current message"
            )
        updated["edit_date"] = int(time.time())
        self._messages[key] = copy.deepcopy(updated)
        return updated

    def _edit_message_text(self, call: ApiCall) -> JSON | bool:
        plain, entities = self._format(
            call.params.get("text"),
            call.params.get("parse_mode"),
            call.params.get("entities"),
            caption=False,
        )
        if not plain.strip():
            raise bad_request("message text is empty")
        target = self._editable(call)
        if target is not None and "text" not in target[1]:
            raise bad_request("there is no text in the message to edit")
        return self._apply_edit(call, {"text": plain, "entities": entities})

    def _edit_message_caption(self, call: ApiCall) -> JSON | bool:
        target = self._editable(call)
        if target is not None and not any(k in target[1] for k in _CAPTIONABLE):
            raise bad_request("there is no caption in the message to edit")
        plain, entities = self._format(
            call.params.get("caption", ""),
            call.params.get("parse_mode"),
            call.params.get("caption_entities"),
            caption=True,
        )
        return self._apply_edit(call, {"caption": plain or None, "caption_entities": entities})

    def _edit_message_reply_markup(self, call: ApiCall) -> JSON | bool:
        return self._apply_edit(call, {})

    def _delete_message(self, call: ApiCall) -> bool:
        key = self._resolve_chat(call.params.get("chat_id"))
        message_id = _as_int(call.params.get("message_id"), 0)
        if self._messages.pop((key, message_id), None) is None:
            raise bad_request("message to delete not found")
        return True

    def _delete_messages(self, call: ApiCall) -> bool:
        key = self._resolve_chat(call.params.get("chat_id"))
        ids = call.params.get("message_ids")
        if not isinstance(ids, list) or not ids:
            raise bad_request("message_ids must be a non-empty list")
        for message_id in ids:
            self._messages.pop((key, _as_int(message_id, 0)), None)
        return True


_DESCRIPTIONS: Final[dict[str, Callable[[BotAPIStandIn], str]]] = {
    "setWebhook": lambda s: "Webhook was set" if s.webhook else "Webhook was deleted",
    "deleteWebhook": lambda s: "Webhook was deleted",
}


def _decode_form_value(name: str, raw: str) -> Any:
    """Undo PTB's encoding: str values are sent as-is, everything else json.dumps-ed."""
    if name in _STRING_PARAMS:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _as_int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    return default


def _as_float(value: Any, default: float) -> float:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return default


def _image_size(content: bytes | None) -> tuple[int, int] | None:
    if not content:
        return None
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    try:
        with Image.open(io.BytesIO(content)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _default_suffix(kind: str) -> str:
    return {
        "photo": "jpg",
        "video": "mp4",
        "animation": "mp4",
        "video_note": "mp4",
        "voice": "oga",
        "audio": "mp3",
        "sticker": "webp",
    }.get(kind, "bin")


def _guess_mime(suffix: str) -> str | None:
    return {
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "png": "image/png",
        "webp": "image/webp",
        "gif": "image/gif",
        "mp4": "video/mp4",
        "oga": "audio/ogg",
        "ogg": "audio/ogg",
        "mp3": "audio/mpeg",
        "pdf": "application/pdf",
        "txt": "text/plain",
    }.get(suffix.lower())
