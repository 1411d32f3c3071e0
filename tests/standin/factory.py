"""Builders for Telegram ``Update`` JSON, shaped like what the Bot API really sends.

Every builder returns a plain ``dict`` using Telegram's own field names (``from``, ``chat``,
``message_id``, ``entities`` ...), ready for ``BotAPIStandIn.push_update`` /
``deliver_webhook`` or ``telegram.Update.de_json``. ``update_id`` grows per factory.

Bound to a stand-in (``UpdateFactory(standin)``), message ids come from the stand-in's per-chat
sequence (so the bot's own messages never collide with the user's) and media ``content`` is
registered with ``add_file`` so the bot can ``getFile`` and download it. Without content, a bound
factory registers a small real JPEG (photos) or placeholder bytes (other media).
"""

from __future__ import annotations

import io
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from tests.standin.server import BotAPIStandIn

__all__ = ["DEFAULT_GROUP_ID", "Group", "UpdateFactory", "User", "make_jpeg", "make_ogg"]

JSON = dict[str, Any]

DEFAULT_GROUP_ID: Final = -1_001_234_567_890
_DEFAULT_BOT: Final[JSON] = {
    "id": 123456,
    "is_bot": True,
    "first_name": "Tin báo (test)",
    "username": "tinbao_test_bot",
}


@dataclass(frozen=True)
class User:
    """A Telegram user who writes to the bot."""

    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = "vi"
    is_bot: bool = False
    is_premium: bool | None = None

    def to_dict(self) -> JSON:
        data: JSON = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        for key in ("last_name", "username", "language_code", "is_premium"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data

    def private_chat(self) -> JSON:
        chat: JSON = {"id": self.id, "type": "private", "first_name": self.first_name}
        if self.last_name is not None:
            chat["last_name"] = self.last_name
        if self.username is not None:
            chat["username"] = self.username
        return chat


@dataclass(frozen=True)
class Group:
    """A group chat (default: a supergroup, as officer units use)."""

    id: int = DEFAULT_GROUP_ID
    title: str = "Đội CSGT - Trực ban"
    type: str = "supergroup"
    is_forum: bool = False
    username: str | None = None

    def to_dict(self) -> JSON:
        chat: JSON = {"id": self.id, "title": self.title, "type": self.type}
        if self.is_forum:
            chat["is_forum"] = True
        if self.username is not None:
            chat["username"] = self.username
        return chat


def make_jpeg(
    width: int = 64,
    height: int = 48,
    color: tuple[int, int, int] = (200, 30, 30),
    *,
    gps: tuple[float, float] | None = None,
    make: str | None = None,
) -> bytes:
    """A real JPEG; ``gps=(lat, lon)`` / ``make`` add EXIF (GPS IFD, camera Make) to test
    metadata stripping."""
    from PIL import Image

    image = Image.new("RGB", (width, height), color)
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if gps is not None:
        lat, lon = gps

        def dms(value: float) -> tuple[float, float, float]:
            value = abs(value)
            degrees = int(value)
            minutes = int((value - degrees) * 60)
            seconds = round(((value - degrees) * 60 - minutes) * 60, 4)
            return (float(degrees), float(minutes), seconds)

        exif[0x8825] = {
            1: "N" if lat >= 0 else "S",
            2: dms(lat),
            3: "E" if lon >= 0 else "W",
            4: dms(lon),
        }
    out = io.BytesIO()
    if len(exif):
        image.save(out, "JPEG", exif=exif.tobytes())
    else:
        image.save(out, "JPEG")
    return out.getvalue()


#: The place and the creation time :func:`make_mp4` writes into a video, for tests to look for.
MP4_LOCATION: Final = b"+10.3759+105.4185/"
MP4_CREATED: Final = (3_900_000_000).to_bytes(4, "big")


def make_mp4(payload: bytes = b"\x01" * 32) -> bytes:
    """A minimal, well-formed MP4 (``ftyp``, ``moov`` with ``mvhd`` and ``udta``, ``mdat``) whose
    metadata says where (``©xyz``, :data:`MP4_LOCATION`) and when (:data:`MP4_CREATED`) it was
    filmed, as a phone writes it."""

    def box(kind: bytes, body: bytes) -> bytes:
        return (8 + len(body)).to_bytes(4, "big") + kind + body

    xyz = box(b"\xa9xyz", b"\x00\x11\x15\xc7" + MP4_LOCATION)
    mvhd = box(b"mvhd", b"\x00\x00\x00\x00" + MP4_CREATED * 2 + bytes(88))
    moov = box(b"moov", mvhd + box(b"udta", xyz))
    return box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + moov + box(b"mdat", payload)


#: What :func:`make_ogg` writes into a voice note's tags, for tests to look for.
OGG_TAGS: Final = {
    "ARTIST": "Nguyen Van A 0912345678",
    "LOCATION": "+10.3759+105.4185",
    "ENCODER": "SpyPhone 9000 Recorder",
}


def make_ogg(codec: str = "opus", seconds: float = 0.5) -> bytes:
    """A real Ogg voice note (``"opus"`` or ``"vorbis"``, a 440 Hz tone encoded by libsndfile)
    whose comment header carries :data:`OGG_TAGS`, as a phone's recorder may write them."""
    import mutagen
    import numpy as np
    import soundfile

    rate = 48_000
    times = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * times)).astype("float32")
    buffer = io.BytesIO()
    soundfile.write(buffer, tone, rate, format="OGG", subtype=codec.upper())
    buffer = io.BytesIO(buffer.getvalue())
    tagged = mutagen.File(buffer)
    assert tagged is not None and tagged.tags is not None
    for name, value in OGG_TAGS.items():
        tagged.tags[name] = [value]
    tagged.save(buffer)
    return buffer.getvalue()


class UpdateFactory:
    """Builds Update dicts. See the module docstring."""

    def __init__(
        self,
        standin: BotAPIStandIn | None = None,
        *,
        bot_user: JSON | None = None,
        first_update_id: int = 1,
    ) -> None:
        self.standin = standin
        if bot_user is not None:
            self.bot_user: JSON = dict(bot_user)
        elif standin is not None:
            user = standin.bot_user
            self.bot_user = {
                k: user[k] for k in ("id", "is_bot", "first_name", "username") if k in user
            }
        else:
            self.bot_user = dict(_DEFAULT_BOT)
        self._update_ids = itertools.count(first_update_id)
        self._user_ids = itertools.count(700_000_001)
        self._message_ids: dict[int, int] = {}
        self._callback_ids = itertools.count(4_382_109_384_000_000_001)
        self._media_groups = itertools.count(13_900_000_000_000_001)
        self._files = itertools.count(1)
        self.vi_user = self.new_user(
            first_name="Lan", last_name="Nguyễn", username="lan_nguyen", language_code="vi"
        )
        self.en_user = self.new_user(
            first_name="John", last_name="Smith", username="jsmith", language_code="en"
        )
        self.group = Group()

    # ------------------------------------------------------------------ basics

    def new_user(
        self,
        first_name: str = "Minh",
        last_name: str | None = "Trần",
        username: str | None = None,
        language_code: str | None = "vi",
        *,
        user_id: int | None = None,
    ) -> User:
        return User(
            id=user_id if user_id is not None else next(self._user_ids),
            first_name=first_name,
            last_name=last_name,
            username=username,
            language_code=language_code,
        )

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def next_message_id(self, chat_id: int) -> int:
        if self.standin is not None:
            return self.standin.allocate_message_id(chat_id)
        message_id = self._message_ids.get(chat_id, 1)
        self._message_ids[chat_id] = message_id + 1
        return message_id

    def update(self, **payload: Any) -> JSON:
        """``{"update_id": next, **payload}``, e.g. ``update(message=...)``."""
        return {"update_id": self.next_update_id(), **payload}

    @staticmethod
    def _chat(user: User | None, chat: Group | JSON | None) -> JSON:
        if chat is None:
            if user is None:
                raise ValueError("a message needs a user or a chat")
            return user.private_chat()
        return chat.to_dict() if isinstance(chat, Group) else dict(chat)

    def message(
        self,
        user: User | None,
        chat: Group | JSON | None = None,
        *,
        date: int | None = None,
        message_thread_id: int | None = None,
        reply_to: JSON | None = None,
        **content: Any,
    ) -> JSON:
        """A Message dict from ``user`` in ``chat`` (default: the user's private chat)."""
        chat_dict = self._chat(user, chat)
        message: JSON = {"message_id": self.next_message_id(chat_dict["id"])}
        if user is not None:
            message["from"] = user.to_dict()
        message["chat"] = chat_dict
        message["date"] = date if date is not None else int(time.time())
        if message_thread_id is not None:
            message["message_thread_id"] = message_thread_id
            if chat_dict.get("is_forum"):
                message["is_topic_message"] = True
        if reply_to is not None:
            replied = {k: v for k, v in reply_to.items() if k != "reply_to_message"}
            message["reply_to_message"] = replied
        elif message_thread_id is not None and chat_dict.get("is_forum"):
            # In a forum topic, a message that replies to nothing replies to the topic's
            # creation service message.
            message["reply_to_message"] = {
                "message_id": message_thread_id,
                "from": user.to_dict() if user is not None else self.bot_user,
                "chat": chat_dict,
                "date": message["date"] - 3600,
                "message_thread_id": message_thread_id,
                "forum_topic_created": {"name": "Báo cáo", "icon_color": 7322096},
                "is_topic_message": True,
            }
        message.update({k: v for k, v in content.items() if v is not None})
        return message

    # ------------------------------------------------------------------ text

    def text(
        self,
        user: User,
        text: str,
        *,
        chat: Group | JSON | None = None,
        entities: list[JSON] | None = None,
        reply_to: JSON | None = None,
        message_thread_id: int | None = None,
    ) -> JSON:
        message = self.message(
            user,
            chat,
            reply_to=reply_to,
            message_thread_id=message_thread_id,
            text=text,
            entities=entities,
        )
        return self.update(message=message)

    def command(
        self,
        user: User,
        command: str,
        args: str | None = None,
        *,
        chat: Group | JSON | None = None,
        mention_bot: bool = False,
        message_thread_id: int | None = None,
    ) -> JSON:
        """``/start`` (+ ``args``); ``mention_bot`` writes ``/start@tinbao_test_bot``."""
        name = command if command.startswith("/") else f"/{command}"
        if mention_bot:
            name = f"{name}@{self.bot_user['username']}"
        text = f"{name} {args}" if args else name
        entities = [{"type": "bot_command", "offset": 0, "length": _utf16_len(name)}]
        return self.text(
            user,
            text,
            chat=chat,
            entities=entities,
            message_thread_id=message_thread_id,
        )

    def edited_text(self, original: JSON, new_text: str, *, edit_date: int | None = None) -> JSON:
        """An ``edited_message`` update for ``original`` (an update or a message dict)."""
        message = dict(original.get("message") or original.get("edited_message") or original)
        message["text"] = new_text
        message.pop("entities", None)
        message["edit_date"] = edit_date if edit_date is not None else int(time.time())
        return self.update(edited_message=message)

    # ------------------------------------------------------------------ callback queries

    def bot_message(
        self,
        chat: JSON,
        text: str = "Chọn loại tin báo:",
        *,
        reply_markup: JSON | None = None,
    ) -> JSON:
        """A message the bot sent earlier (for callback queries and replies)."""
        message: JSON = {
            "message_id": self.next_message_id(chat["id"]),
            "from": dict(self.bot_user),
            "chat": dict(chat),
            "date": int(time.time()) - 5,
            "text": text,
        }
        if reply_markup is not None:
            message["reply_markup"] = reply_markup
        return message

    def callback(
        self,
        user: User,
        data: str,
        *,
        message: JSON | None = None,
        message_text: str = "Chọn loại tin báo:",
        reply_markup: JSON | None = None,
        chat: Group | JSON | None = None,
    ) -> JSON:
        """A ``callback_query`` with ``data`` pressed on ``message`` (default: a new bot
        message in the user's private chat carrying a button with that data)."""
        if message is None:
            markup = reply_markup or {
                "inline_keyboard": [[{"text": "Chọn", "callback_data": data}]]
            }
            message = self.bot_message(self._chat(user, chat), message_text, reply_markup=markup)
        chat_id = message["chat"]["id"]
        query: JSON = {
            "id": str(next(self._callback_ids)),
            "from": user.to_dict(),
            "message": message,
            "chat_instance": str(-(abs(chat_id) * 7919 % 9_000_000_000_000_000_000) - 1),
            "data": data,
        }
        return self.update(callback_query=query)

    # ------------------------------------------------------------------ media

    def _file(
        self,
        content: bytes | None,
        suffix: str,
        kind: str,
        *,
        file_name: str | None = None,
        mime_type: str | None = None,
    ) -> tuple[str, str, int]:
        if self.standin is not None:
            if content is None:
                content = make_jpeg() if kind == "photo" else f"{kind}-{uuid.uuid4()}".encode()
            file_id, unique_id = self.standin.add_file(
                content, suffix, kind=kind, file_name=file_name, mime_type=mime_type
            )
            return file_id, unique_id, len(content)
        n = next(self._files)
        prefix = {"photo": "AgACAgUAAxkBAAI", "sticker": "CAACAgIAAxkBAAI"}.get(
            kind, "BQACAgUAAxkBAAI"
        )
        size = len(content) if content is not None else 54_321
        return (
            f"{prefix}{n:05d}{uuid.uuid4().hex[:24]}",
            f"AgAD{n:04d}{uuid.uuid4().hex[:8]}",
            size,
        )

    def photo_sizes(
        self, content: bytes | None = None, *, width: int = 1280, height: int = 960
    ) -> list[JSON]:
        """PhotoSize list as Telegram sends it: thumbnails first, the original last."""
        sizes: list[JSON] = []
        for limit in (90, 320, 800):
            if max(width, height) > limit:
                scale = limit / max(width, height)
                file_id, unique_id, size = self._file(content, "jpg", "photo")
                sizes.append(
                    {
                        "file_id": file_id,
                        "file_unique_id": unique_id,
                        "file_size": size,
                        "width": max(1, round(width * scale)),
                        "height": max(1, round(height * scale)),
                    }
                )
        file_id, unique_id, size = self._file(content, "jpg", "photo")
        sizes.append(
            {
                "file_id": file_id,
                "file_unique_id": unique_id,
                "file_size": size,
                "width": width,
                "height": height,
            }
        )
        return sizes

    def photo(
        self,
        user: User,
        content: bytes | None = None,
        *,
        caption: str | None = None,
        chat: Group | JSON | None = None,
        width: int = 1280,
        height: int = 960,
        media_group_id: str | None = None,
        message_thread_id: int | None = None,
        reply_to: JSON | None = None,
    ) -> JSON:
        """A compressed photo; a bound factory registers ``content`` for every size."""
        message = self.message(
            user,
            chat,
            message_thread_id=message_thread_id,
            reply_to=reply_to,
            media_group_id=media_group_id,
            photo=self.photo_sizes(content, width=width, height=height),
            caption=caption,
        )
        return self.update(message=message)

    def album(
        self, user: User, contents: list[bytes | None], *, caption: str | None = None
    ) -> list[JSON]:
        """Several photo updates sharing a ``media_group_id`` (caption on the first)."""
        group_id = str(next(self._media_groups))
        return [
            self.photo(user, content, caption=caption if i == 0 else None, media_group_id=group_id)
            for i, content in enumerate(contents)
        ]

    def document(
        self,
        user: User,
        content: bytes | None = None,
        *,
        file_name: str = "bien_ban.pdf",
        mime_type: str = "application/pdf",
        caption: str | None = None,
        chat: Group | JSON | None = None,
        reply_to: JSON | None = None,
    ) -> JSON:
        """A file sent "as document" (images sent this way keep their EXIF)."""
        suffix = file_name.rsplit(".", 1)[-1] if "." in file_name else "bin"
        file_id, unique_id, size = self._file(
            content, suffix, "document", file_name=file_name, mime_type=mime_type
        )
        document = {
            "file_name": file_name,
            "mime_type": mime_type,
            "file_id": file_id,
            "file_unique_id": unique_id,
            "file_size": size,
        }
        message = self.message(user, chat, reply_to=reply_to, document=document, caption=caption)
        return self.update(message=message)

    def video(
        self,
        user: User,
        content: bytes | None = None,
        *,
        duration: int = 12,
        width: int = 1280,
        height: int = 720,
        caption: str | None = None,
        chat: Group | JSON | None = None,
    ) -> JSON:
        file_id, unique_id, size = self._file(content, "mp4", "video", mime_type="video/mp4")
        video = {
            "duration": duration,
            "width": width,
            "height": height,
            "file_name": "VID_20250101_120000.mp4",
            "mime_type": "video/mp4",
            "thumbnail": {
                "file_id": f"AAMCAgADGQEAAg{uuid.uuid4().hex[:20]}",
                "file_unique_id": f"AQAD{uuid.uuid4().hex[:8]}",
                "file_size": 9_876,
                "width": 320,
                "height": 180,
            },
            "file_id": file_id,
            "file_unique_id": unique_id,
            "file_size": size,
        }
        return self.update(message=self.message(user, chat, video=video, caption=caption))

    def voice(
        self,
        user: User,
        content: bytes | None = None,
        *,
        duration: int = 4,
        chat: Group | JSON | None = None,
    ) -> JSON:
        file_id, unique_id, size = self._file(content, "oga", "voice", mime_type="audio/ogg")
        voice = {
            "duration": duration,
            "mime_type": "audio/ogg",
            "file_id": file_id,
            "file_unique_id": unique_id,
            "file_size": size,
        }
        return self.update(message=self.message(user, chat, voice=voice))

    def sticker(
        self,
        user: User,
        *,
        emoji: str = "👍",
        set_name: str = "HotCherry",
        chat: Group | JSON | None = None,
    ) -> JSON:
        file_id, unique_id, size = self._file(None, "webp", "sticker", mime_type="image/webp")
        sticker = {
            "width": 512,
            "height": 512,
            "emoji": emoji,
            "set_name": set_name,
            "is_animated": False,
            "is_video": False,
            "type": "regular",
            "file_id": file_id,
            "file_unique_id": unique_id,
            "file_size": size,
        }
        return self.update(message=self.message(user, chat, sticker=sticker))

    # ------------------------------------------------------------------ location and contact

    @staticmethod
    def _location(
        latitude: float,
        longitude: float,
        horizontal_accuracy: float | None,
        live_period: int | None,
        heading: int | None = None,
    ) -> JSON:
        location: JSON = {"latitude": latitude, "longitude": longitude}
        if horizontal_accuracy is not None:
            location["horizontal_accuracy"] = horizontal_accuracy
        if live_period is not None:
            location["live_period"] = live_period
        if heading is not None:
            location["heading"] = heading
        return location

    def location(
        self,
        user: User,
        latitude: float = 21.028511,
        longitude: float = 105.804817,
        *,
        horizontal_accuracy: float | None = None,
        live_period: int | None = None,
        chat: Group | JSON | None = None,
    ) -> JSON:
        """A location message (Hà Nội by default); ``live_period`` starts a live location."""
        location = self._location(latitude, longitude, horizontal_accuracy, live_period)
        return self.update(message=self.message(user, chat, location=location))

    def live_location_update(
        self,
        original: JSON,
        latitude: float,
        longitude: float,
        *,
        horizontal_accuracy: float | None = 12.5,
        heading: int | None = None,
    ) -> JSON:
        """The ``edited_message`` Telegram sends when a live location moves."""
        message = dict(original.get("message") or original.get("edited_message") or original)
        old = message.get("location") or {}
        message["location"] = self._location(
            latitude, longitude, horizontal_accuracy, old.get("live_period", 900), heading
        )
        message["edit_date"] = int(time.time())
        return self.update(edited_message=message)

    def contact(
        self,
        user: User,
        phone_number: str = "+84912345678",
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        user_id: int | None = None,
        own: bool = True,
        chat: Group | JSON | None = None,
    ) -> JSON:
        """A shared contact; ``own=True`` (the request_contact button) sets ``user_id``."""
        contact: JSON = {
            "phone_number": phone_number,
            "first_name": first_name or user.first_name,
        }
        if last_name or (own and user.last_name):
            contact["last_name"] = last_name or user.last_name
        if user_id is not None or own:
            contact["user_id"] = user_id if user_id is not None else user.id
        return self.update(message=self.message(user, chat, contact=contact))

    # ------------------------------------------------------------------ groups

    def group_text(
        self,
        user: User,
        text: str,
        *,
        group: Group | None = None,
        message_thread_id: int | None = None,
        reply_to: JSON | None = None,
        entities: list[JSON] | None = None,
    ) -> JSON:
        """A message in a (super)group, optionally in a forum topic or replying to a message."""
        group = group or self.group
        if message_thread_id is not None and not group.is_forum:
            group = Group(group.id, group.title, group.type, True, group.username)
        message = self.message(
            user,
            group,
            message_thread_id=message_thread_id,
            reply_to=reply_to,
            text=text,
            entities=entities,
        )
        return self.update(message=message)

    def group_command(
        self,
        user: User,
        command: str,
        args: str | None = None,
        *,
        group: Group | None = None,
        mention_bot: bool = True,
        message_thread_id: int | None = None,
    ) -> JSON:
        group = group or self.group
        if message_thread_id is not None and not group.is_forum:
            group = Group(group.id, group.title, group.type, True, group.username)
        return self.command(
            user,
            command,
            args,
            chat=group,
            mention_bot=mention_bot,
            message_thread_id=message_thread_id,
        )

    def my_chat_member(
        self,
        user: User,
        *,
        chat: Group | JSON | None = None,
        old_status: str = "member",
        new_status: str = "kicked",
    ) -> JSON:
        """The bot's membership changed (``kicked`` in a private chat = the user blocked it)."""
        chat_dict = self._chat(user, chat)

        def member(status: str) -> JSON:
            data: JSON = {"user": dict(self.bot_user), "status": status}
            if status == "kicked":
                data["until_date"] = 0
            return data

        return self.update(
            my_chat_member={
                "chat": chat_dict,
                "from": user.to_dict(),
                "date": int(time.time()),
                "old_chat_member": member(old_status),
                "new_chat_member": member(new_status),
            }
        )


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
