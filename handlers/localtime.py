"""Every time shown to a person, in the service's zone (Vietnam's by default).

The database keeps UTC; only what a citizen or an officer reads is converted, here, and
formatted the Vietnamese way (``dd/mm/yyyy HH:MM``). The zone is ``TINBAO_TIMEZONE``, set once
by the composition root with :func:`configure`; it defaults to ``Asia/Ho_Chi_Minh``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE: Final = "Asia/Ho_Chi_Minh"
#: Vietnam has kept UTC+7 without daylight saving since 1975: the stand-in when the system has
#: no time-zone database (a slim container without ``tzdata``).
_VIETNAM_FIXED: Final = timezone(timedelta(hours=7), "ICT")


def zone(name: str) -> tzinfo:
    """The zone called ``name``; :class:`ValueError` when it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        if name == DEFAULT_TIMEZONE:
            return _VIETNAM_FIXED
        raise ValueError(f"unknown time zone {name!r} (e.g. {DEFAULT_TIMEZONE})") from exc


_zone: tzinfo = zone(DEFAULT_TIMEZONE)


def configure(name: str) -> None:
    """Use the zone ``name`` (``TINBAO_TIMEZONE``) for every time shown from now on."""
    global _zone
    _zone = zone(name)


def local_zone() -> tzinfo:
    return _zone


def zone_name() -> str | None:
    """The IANA name of the local zone (for PostgreSQL's ``timezone()``); ``None`` for the
    fixed UTC+7 stand-in used without a time-zone database."""
    key = getattr(_zone, "key", None)
    return key if isinstance(key, str) else None


def utc_offset(moment: datetime) -> timedelta:
    """The local zone's offset from UTC at ``moment`` (for SQLite's date modifiers)."""
    return to_local(moment).utcoffset() or timedelta(0)


def to_local(moment: datetime) -> datetime:
    """``moment`` in the local zone; a naive value is taken as UTC (how the database stores it)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(_zone)


def format_datetime(moment: datetime | None) -> str:
    """``dd/mm/yyyy HH:MM``, e.g. ``30/11/2026 05:33``; empty for no time (``None``)."""
    return to_local(moment).strftime("%d/%m/%Y %H:%M") if moment is not None else ""


def format_short(moment: datetime) -> str:
    """``HH:MM dd/mm``: a recent time in a list."""
    return to_local(moment).strftime("%H:%M %d/%m")


def format_month(moment: datetime) -> str:
    """``mm/yyyy`` of the local month ``moment`` falls in."""
    return to_local(moment).strftime("%m/%Y")


def today() -> date:
    """Today's date in the local zone."""
    return datetime.now(UTC).astimezone(_zone).date()


def local_midnight(day: date) -> datetime:
    """The start of the local ``day``, in UTC (a bound for a database query)."""
    return datetime(day.year, day.month, day.day, tzinfo=_zone).astimezone(UTC)
