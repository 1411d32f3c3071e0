"""How Telegram updates come in without one bad update wedging the bot.

python-telegram-bot parses a ``getUpdates`` batch in one piece (``Update.de_list``). One update
it cannot parse (a ``message`` whose ``photo`` lacks its required fields, a kind with a
malformed body) makes the whole batch fail: the Updater logs the raw data, never moves the
offset past it, and asks again at once, forever. Here each update is parsed on its own:

- an update that cannot be parsed is logged once, at WARNING, with its id and the exception's
  type (never its content, which carries the citizen's ids), counted in
  :class:`TelegramMetrics`, and replaced by an empty ``Update`` with the same id, so the
  offset moves past it and the rest of the batch is handled;
- any failure of ``getUpdates`` becomes a ``TelegramError``, so PTB's retry loop backs off
  (1 s growing to 30 s) instead of spinning; repeated time-outs and a server that answers a
  long poll at once with nothing are slowed down here too.

The webhook uses the same :class:`UpdateIntake`.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from telegram import Bot, Update
from telegram._utils.defaultvalue import DEFAULT_NONE, DefaultValue
from telegram._utils.types import JSONDict, ODVInput, TimePeriod
from telegram.error import NetworkError, TelegramError, TimedOut
from telegram.ext import ExtBot

log = logging.getLogger(__name__)

#: Ids of malformed updates remembered, so that each is logged once.
_REMEMBERED = 4096
#: A long poll that answers empty faster than this was not a long poll.
_FAST_EMPTY = 0.5


@dataclass
class TelegramMetrics:
    """In-process counters of the Telegram adapter (shown by ``/healthz``)."""

    #: Updates that could not be parsed and were skipped.
    malformed_updates: int = 0
    #: Failed ``getUpdates`` calls (network, Bot API errors, unreadable answers).
    polling_errors: int = 0
    #: Webhook requests refused: wrong secret (403) or not an update (400).
    webhook_refused: int = 0
    #: Update handlers that raised.
    handler_errors: int = 0
    #: Button presses answered by the adapter because the handler did not (or raised).
    presses_answered_by_fallback: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class UpdateIntake:
    """Parses one update at a time; a malformed one is logged once, counted and skipped."""

    def __init__(self, metrics: TelegramMetrics) -> None:
        self.metrics = metrics
        self._logged: OrderedDict[int, None] = OrderedDict()

    def parse(self, data: object, bot: Bot) -> Update | None:
        """The update, or ``None`` when ``data`` is not one that can be handled."""
        update_id = data.get("update_id") if isinstance(data, dict) else None
        if isinstance(update_id, bool) or not isinstance(update_id, int):
            update_id = None
        try:
            if update_id is None:
                raise ValueError("no update_id")
            return Update.de_json(data, bot)  # type: ignore[arg-type]
        except Exception as exc:  # any parse failure means "skip this update"
            self.skipped(update_id, exc)
            return None

    def skipped(self, update_id: int | None, exc: BaseException) -> None:
        self.metrics.malformed_updates += 1
        if update_id is not None:
            if update_id in self._logged:
                return
            self._logged[update_id] = None
            if len(self._logged) > _REMEMBERED:
                self._logged.popitem(last=False)
        log.warning(
            "skipped a Telegram update that cannot be parsed: update %s (%s)",
            update_id if update_id is not None else "without an id",
            type(exc).__name__,
        )

    def parse_batch(self, result: object, bot: Bot) -> tuple[Update, ...]:
        """A ``getUpdates`` result as updates; each malformed one becomes an empty ``Update``
        with its id, so that the Updater's offset moves past it."""
        if not isinstance(result, list):
            raise NetworkError("getUpdates answered something other than a list")
        updates: list[Update] = []
        for item in result:
            update = self.parse(item, bot)
            if update is not None:
                updates.append(update)
                continue
            update_id = item.get("update_id") if isinstance(item, dict) else None
            if isinstance(update_id, int) and not isinstance(update_id, bool):
                updates.append(Update(update_id=update_id))
        if result and not updates:
            # Nothing in the batch has an id to confirm: wait for the retry loop's backoff.
            raise NetworkError("getUpdates answered updates without ids")
        return tuple(updates)


class ResilientBot(ExtBot[None]):
    """An ``ExtBot`` whose ``get_updates`` survives malformed updates and never spins."""

    def __init__(self, *args: Any, intake: UpdateIntake, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intake = intake
        self._timeouts_in_a_row = 0

    async def get_updates(
        self,
        offset: int | None = None,
        limit: int | None = None,
        timeout: TimePeriod | None = None,  # noqa: ASYNC109 - the Bot API signature
        allowed_updates: Sequence[str] | None = None,
        *,
        read_timeout: ODVInput[float] = DEFAULT_NONE,
        write_timeout: ODVInput[float] = DEFAULT_NONE,
        connect_timeout: ODVInput[float] = DEFAULT_NONE,
        pool_timeout: ODVInput[float] = DEFAULT_NONE,
        api_kwargs: JSONDict | None = None,
    ) -> tuple[Update, ...]:
        if self._timeouts_in_a_row >= 3:  # PTB retries a time-out at once; slow down here
            await asyncio.sleep(min(30.0, 2.0 ** (self._timeouts_in_a_row - 3)))
        poll = timeout.total_seconds() if isinstance(timeout, dtm.timedelta) else timeout or 0
        # As Bot.get_updates: the request's read timeout plus the long-poll time.
        if isinstance(read_timeout, DefaultValue):
            base = self._request[0].read_timeout or 0
        else:
            base = read_timeout or 0
        data: JSONDict = {
            "timeout": timeout,
            "offset": offset,
            "limit": limit,
            "allowed_updates": allowed_updates,
        }
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await self._post(
                "getUpdates",
                data,
                read_timeout=base + poll,
                write_timeout=write_timeout,
                connect_timeout=connect_timeout,
                pool_timeout=pool_timeout,
                api_kwargs=api_kwargs,
            )
        except TimedOut:
            self._timeouts_in_a_row += 1
            self._intake.metrics.polling_errors += 1
            raise
        except TelegramError:
            self._timeouts_in_a_row = 0
            raise  # counted by the error callback; PTB's loop backs off
        except Exception as exc:  # e.g. RecursionError on a deeply nested answer
            self._timeouts_in_a_row = 0
            raise NetworkError(f"getUpdates answer unreadable ({type(exc).__name__})") from exc
        self._timeouts_in_a_row = 0
        updates = self._intake.parse_batch(result, self)
        if not result and poll >= 1 and loop.time() - started < _FAST_EMPTY:
            await asyncio.sleep(1.0)  # a server or proxy that ignores long polling
        for update in updates:
            self.insert_callback_data(update)
        return updates
