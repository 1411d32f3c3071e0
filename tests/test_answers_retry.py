"""bot.answers: a direct answer is tried again after a 429 or a connection error, but never
after a time-out, when the message may already have been delivered (it would show twice)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut

from bot.answers import patiently, retry_after_seconds


class Sends:
    """A send that fails with ``errors`` in turn, then succeeds; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "sent"


async def test_a_timed_out_send_is_not_sent_again() -> None:
    send = Sends(TimedOut())
    with pytest.raises(TimedOut):
        await patiently(send)
    assert send.calls == 1


async def test_a_timed_out_edit_is_tried_again() -> None:
    edit = Sends(TimedOut())
    assert await patiently(edit, idempotent=True) == "sent"
    assert edit.calls == 2


async def test_a_pool_time_out_sent_nothing_and_is_tried_again() -> None:
    send = Sends(TimedOut("Pool timeout: All connections in the connection pool are occupied."))
    assert await patiently(send) == "sent"
    assert send.calls == 2


async def test_a_connect_time_out_sent_nothing_and_is_tried_again() -> None:
    send = Sends(TimedOut("Connect timeout: no connection to Telegram. Request was *not* sent."))
    assert await patiently(send) == "sent"
    assert send.calls == 2


async def test_a_connection_error_and_a_429_are_tried_again() -> None:
    send = Sends(NetworkError("httpx.ConnectError: refused"), RetryAfter(timedelta(seconds=0)))
    assert await patiently(send) == "sent"
    assert send.calls == 3


async def test_a_bad_request_is_not_tried_again() -> None:
    send = Sends(BadRequest("chat not found"))
    with pytest.raises(BadRequest):
        await patiently(send)
    assert send.calls == 1


def test_retry_after_has_a_floor() -> None:
    assert retry_after_seconds(RetryAfter(timedelta(seconds=0))) == 1.0
    assert retry_after_seconds(RetryAfter(timedelta(seconds=0)), floor=0.05) == 0.05
    assert retry_after_seconds(RetryAfter(timedelta(seconds=7))) == 7.0
