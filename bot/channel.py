"""A citizen channel as the runtime sees it: a lifecycle, a state for ``/healthz`` and a sender.

Each adapter (Telegram, Zalo Bot Platform, Zalo OA, the web inbox) implements :class:`Channel`;
the composition root keeps them in a :class:`ChannelRegistry`. A message to a citizen, whether
the direct answer to their message or a later one from the outbox (a question from the police, a
status change, a reward), goes out through the sender of the channel that the citizen's route
names, rendered for that channel's :class:`~handlers.channels.Capabilities`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from handlers.channels import Capabilities, ChannelName
from handlers.events import Reply


class SendError(Exception):
    """A send that did not happen. The outbox decides from the flags what comes next.

    - ``retry_after``: the channel asked to wait this many seconds (Telegram's 429).
    - ``gone``: the citizen can no longer be reached there (blocked the bot, OA window closed).
    - ``permanent``: the message itself was refused; retrying the same message cannot help.
    - none of them: a transient failure (5xx, timeout, network); retry with backoff.
    """

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        gone: bool = False,
        permanent: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.gone = gone
        self.permanent = permanent


class CitizenSender(Protocol):
    """Sends neutral replies to one citizen chat on one channel."""

    @property
    def name(self) -> ChannelName: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def send(self, chat_id: str, replies: Sequence[Reply]) -> list[str]:
        """Send ``replies`` in order; raise :class:`SendError` on failure.

        Returns the channel's ids of the messages sent, in order (empty where the channel gives
        none): a relayed question's id lets a reply to it be read as the answer."""


class Channel(CitizenSender, Protocol):
    """A citizen channel with a lifecycle."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def state(self) -> str:
        """``off`` (not configured), ``starting``, ``running`` or ``failing: <reason>``."""


class ChannelRegistry:
    """The channels of one process, by name."""

    def __init__(self) -> None:
        self._channels: dict[ChannelName, Channel] = {}

    def add(self, channel: Channel) -> None:
        if channel.name in self._channels:
            raise ValueError(f"channel {channel.name} registered twice")
        self._channels[channel.name] = channel

    def get(self, name: str) -> Channel | None:
        try:
            return self._channels.get(ChannelName(name))
        except ValueError:
            return None

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._channels.values()))

    def states(self) -> dict[str, str]:
        return {str(channel.name): channel.state() for channel in self._channels.values()}

    async def start(self) -> None:
        for channel in self._channels.values():
            await channel.start()

    async def stop(self) -> None:
        for channel in reversed(list(self._channels.values())):
            await channel.stop()
