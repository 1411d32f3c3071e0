"""Strict, bounded parsing of every query, path and form parameter of the panel.

A parameter that is present but malformed or out of range raises :class:`BadParameter`, which
the panel answers with a 400 page; an empty one is absent. Numbers are ASCII digits only (``²``
is not a digit here), ids fit a signed 64-bit column, dates lie in :data:`DATE_MIN` ..
:data:`DATE_MAX`, and text holds no control characters (PostgreSQL refuses NUL).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import UTC, date, datetime
from typing import Any

from admin.queries import decode_cursor

#: Largest id of a BIGINT column.
MAX_ID = 2**63 - 1
#: Telegram user ids are positive and below 2**52 today; 2**53 leaves room and fits a float.
MAX_TELEGRAM_USER_ID = 2**53 - 1
DATE_MIN = date(2000, 1, 1)
DATE_MAX = date(2100, 12, 31)
YEAR_MIN, YEAR_MAX = DATE_MIN.year, DATE_MAX.year

_DIGITS = re.compile(r"[0-9]{1,19}")
_PERIOD = re.compile(r"([0-9]{4})(?:-([0-9]{2}))?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class BadParameter(ValueError):
    """A parameter the panel will not use; ``name`` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _present(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):  # a file where text was expected
        raise BadParameter(name)
    value = value.strip()
    return value or None


def integer(text: str | None, name: str, *, low: int = 1, high: int = MAX_ID) -> int:
    """ASCII digits (and a leading minus when ``low`` < 0) within ``low`` .. ``high``."""
    if text is None:
        raise BadParameter(name)
    digits = text[1:] if text.startswith("-") and low < 0 else text
    if not _DIGITS.fullmatch(digits):
        raise BadParameter(name)
    value = int(text)
    if not low <= value <= high:
        raise BadParameter(name)
    return value


def path_id(match_info: Mapping[str, str], name: str) -> int:
    return integer(match_info.get(name), name)


def optional_id(values: Mapping[str, Any], name: str) -> int | None:
    text = _present(values, name)
    return None if text is None else integer(text, name)


def optional_date(values: Mapping[str, Any], name: str) -> date | None:
    text = _present(values, name)
    if text is None:
        return None
    if len(text) != 10 or not text.isascii():
        raise BadParameter(name)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise BadParameter(name) from None
    if not DATE_MIN <= day <= DATE_MAX:
        raise BadParameter(name)
    return day


def choice(values: Mapping[str, Any], name: str, allowed: Collection[str]) -> str | None:
    text = _present(values, name)
    if text is None:
        return None
    if text not in allowed:
        raise BadParameter(name)
    return text


def text(values: Mapping[str, Any], name: str, *, limit: int) -> str:
    """Free text up to ``limit`` characters, without control characters ("" when absent)."""
    value = values.get(name, "")
    if not isinstance(value, str):
        raise BadParameter(name)
    if len(value) > limit or _CONTROL.search(value.replace("\r\n", "\n").replace("\t", " ")):
        raise BadParameter(name)
    return value


def period(values: Mapping[str, Any], name: str = "period") -> str | None:
    """A period key, ``YYYY`` or ``YYYY-MM``, within the supported years (None when absent)."""
    value = _present(values, name)
    if value is None:
        return None
    found = _PERIOD.fullmatch(value)
    if found is None or not YEAR_MIN <= int(found[1]) <= YEAR_MAX:
        raise BadParameter(name)
    if found[2] is not None and not 1 <= int(found[2]) <= 12:
        raise BadParameter(name)
    return value


def cursor(values: Mapping[str, Any], name: str = "after") -> tuple[datetime, int] | None:
    value = _present(values, name)
    if value is None:
        return None
    if len(value) > 200 or not value.isascii():
        raise BadParameter(name)
    decoded = decode_cursor(value)
    if decoded is None:
        raise BadParameter(name)
    moment, ident = decoded
    low = datetime(DATE_MIN.year, 1, 1, tzinfo=UTC)
    high = datetime(DATE_MAX.year + 1, 1, 1, tzinfo=UTC)
    if not 1 <= ident <= MAX_ID or not low <= moment < high:
        raise BadParameter(name)
    return decoded
