"""The whole service against the Bot API stand-in: real python-telegram-bot over HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.runtime import Service
from config.settings import Settings
from tests.standin import DEFAULT_TOKEN, ApiCall, BotAPIStandIn
from tests.standin.factory import UpdateFactory, User

TEST_SECRET_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


def service_settings(
    standin: BotAPIStandIn, db_url: str, data_dir: Path, **extra: Any
) -> Settings:
    return Settings(
        telegram_token=DEFAULT_TOKEN,
        telegram_api_url=standin.base_url,
        telegram_file_url=standin.base_file_url,
        database_url=db_url,
        secret_key=TEST_SECRET_KEY,
        data_dir=data_dir,
        polling_timeout=10,
        **extra,
    )


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Service]:
    service = await Service.create(settings)
    await service.start()
    try:
        assert service.telegram is not None
        # A generous limit: parallel test workers share the cores.
        deadline = asyncio.get_running_loop().time() + 30
        while service.telegram.state not in ("polling", "webhook"):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"telegram did not start: {service.telegram.state}")
            await asyncio.sleep(0.01)
        yield service
    finally:
        await service.stop()


class Chat:
    """One citizen talking to the bot through the stand-in."""

    def __init__(
        self, standin: BotAPIStandIn, factory: UpdateFactory, service: Service, user: User
    ):
        self.standin = standin
        self.factory = factory
        self.service = service
        self.user = user

    @property
    def channel(self):
        assert self.service.telegram is not None
        return self.service.telegram

    async def send(self, update: dict[str, Any]) -> list[ApiCall]:
        """Push one update, wait until the bot has handled it, return the calls it caused."""
        start = len(self.standin.calls)
        target = self.channel.updates_handled + 1
        self.standin.push_update(update)
        await self.channel.wait_handled(target, timeout=30)
        return [c for c in self.standin.calls[start:] if c.chat_id in (self.user.id, None)]

    async def command(self, name: str, args: str | None = None) -> list[ApiCall]:
        return await self.send(self.factory.command(self.user, name, args))

    async def say(self, text: str) -> list[ApiCall]:
        return await self.send(self.factory.text(self.user, text))

    def last_keyboard_message(self) -> ApiCall:
        for call in reversed(self.standin.calls):
            if (
                call.method in ("sendMessage", "editMessageText")
                and call.chat_id == self.user.id
                and isinstance(call.params.get("reply_markup"), dict)
                and "inline_keyboard" in call.params["reply_markup"]
            ):
                return call
        raise AssertionError("no message with buttons")

    async def press(self, label: str) -> list[ApiCall]:
        call = self.last_keyboard_message()
        rows = call.params["reply_markup"]["inline_keyboard"]
        for row in rows:
            for button in row:
                if button["text"] == label:
                    message = call.result
                    return await self.send(
                        self.factory.callback(self.user, button["callback_data"], message=message)
                    )
        labels = [b["text"] for row in rows for b in row]
        raise AssertionError(f"no button {label!r} in {labels}")

    def texts(self, calls: list[ApiCall]) -> list[str]:
        """What the citizen saw: new messages, and pressed messages edited into the next step."""
        return [
            c.text
            for c in calls
            if c.method in ("sendMessage", "editMessageText") and c.text is not None
        ]
