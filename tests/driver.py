"""Drives the citizen flow through the real dispatcher and database, without a channel.

The end-to-end tests in ``test_telegram_*.py`` go through python-telegram-bot and the Bot API
stand-in; these drivers keep the flow tests short and fast.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.dispatch import Dispatcher
from config.catalogue import load_catalogue
from handlers.citizen import CitizenFlow, CitizenSettings
from handlers.events import (
    Attachment,
    Button,
    ButtonPress,
    GeoPoint,
    Message,
    Outcome,
    Reply,
    Sender,
    SharedContact,
)
from handlers.i18n import t
from handlers.places import PlaceIndex
from handlers.security import Keyring, PinHasher

TEST_KEY = bytes(range(32))
_update_ids = itertools.count(1000)


def make_flow(*, pins: PinHasher | None = None, **overrides: object) -> CitizenFlow:
    """The citizen flow as ``tinbao run`` builds it (keyed PIN hashes), with test settings."""
    catalogue = load_catalogue()
    settings = CitizenSettings(**overrides)  # type: ignore[arg-type]
    keyring = Keyring(TEST_KEY)
    return CitizenFlow(
        settings=settings,
        keyring=keyring,
        pins=pins or PinHasher(keyring.pin_key),
        catalogue=catalogue,
        places=PlaceIndex(catalogue.units),
    )


class FileStore:
    """The channel's file downloads, served from memory."""

    def __init__(self, files: Mapping[str, bytes] | None = None) -> None:
        self.files = dict(files or {})

    async def fetch(self, attachment: Attachment) -> bytes:
        return self.files[attachment.file_ref]


@dataclass
class Citizen:
    dispatcher: Dispatcher
    user_id: int
    language_code: str | None = "vi"
    files: FileStore = field(default_factory=FileStore)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sender(self) -> Sender:
        return Sender("telegram", str(self.user_id), str(self.user_id), self.language_code)

    async def _run(self, event: Message | ButtonPress) -> Outcome | None:
        outcome = await self.dispatcher.process(event, self.files)
        if outcome is not None:
            self.outcomes.append(outcome)
        return outcome

    async def message(self, **fields: object) -> Outcome | None:
        update_id = fields.pop("update_id", None) or next(_update_ids)
        return await self._run(Message(update_id=update_id, sender=self.sender, **fields))  # type: ignore[arg-type]

    async def say(self, text: str) -> Outcome | None:
        return await self.message(text=text)

    async def command(self, name: str, args: str = "") -> Outcome | None:
        return await self.message(text=f"/{name} {args}".strip(), command=name, args=args)

    async def location(self, lat: float, lon: float) -> Outcome | None:
        return await self.message(location=GeoPoint(lat, lon))

    async def contact(self, phone: str, *, own: bool = True) -> Outcome | None:
        return await self.message(contact=SharedContact(phone, own))

    async def attach(self, *attachments: Attachment, caption: str | None = None) -> Outcome | None:
        return await self.message(attachments=attachments, text=caption)

    async def press_data(self, data: str, update_id: int | None = None) -> Outcome | None:
        return await self._run(
            ButtonPress(update_id=update_id or next(_update_ids), sender=self.sender, data=data)
        )

    def buttons(self) -> list[Button]:
        """The buttons of the newest reply that has any."""
        for outcome in reversed(self.outcomes):
            for reply in reversed(outcome.replies):
                if reply.buttons:
                    return [b for row in reply.buttons for b in row]
        return []

    def button(self, label: str) -> Button:
        for button in self.buttons():
            if button.label == label:
                return button
        raise AssertionError(f"no button {label!r} in {[b.label for b in self.buttons()]}")

    async def press(self, label: str) -> Outcome | None:
        return await self.press_data(self.button(label).data)

    @property
    def last(self) -> Outcome:
        return self.outcomes[-1]

    def texts(self, outcome: Outcome | None = None) -> list[str]:
        return [r.text for r in (outcome or self.last).replies]

    def last_reply(self) -> Reply:
        return self.last.replies[-1]


def label(locale: str, key: str, **values: object) -> str:
    return t(locale, key, **values)


def citizen(
    session_factory: async_sessionmaker[AsyncSession],
    user_id: int,
    *,
    language_code: str | None = "vi",
    flow: CitizenFlow | None = None,
) -> Citizen:
    dispatcher = Dispatcher(session_factory, flow or make_flow())
    return Citizen(dispatcher, user_id, language_code)


HOUR = timedelta(hours=1)


async def sync_units(session_factory: async_sessionmaker[AsyncSession]) -> None:
    """Load the unit catalogue into the database, as ``tinbao run`` does on start."""
    from storage.repositories import Units

    catalogue = load_catalogue()
    async with session_factory() as session, session.begin():
        await Units(session).sync(catalogue)
