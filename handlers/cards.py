"""What officers see: report cards, digests, reminders and alerts, as plain data.

Everything here is channel-neutral (no ``telegram`` import): a :class:`Card` is HTML text in the
subset every channel adapter understands (``<b>``, ``<i>``, ``<code>``, ``<a href>``,
``<blockquote>``), inline buttons, an optional map pin and the evidence to re-send.
``bot/delivery/officers.py`` turns it into Bot API calls.

Anonymity: a card is built from the report row alone. It never holds the tipster's channel id,
username or name. The one identifying detail it may show is a phone number the tipster chose
to leave (contact mode "phone"), decrypted for the card only. Everything the citizen wrote
(description, time and place as typed, captions) is HTML-escaped; captions travel without a
parse mode at all.

Callback data (``r:<action>:<report id>``) stays far below Telegram's 64 bytes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from handlers import card_actions
from handlers.channels import ChannelName
from handlers.domain import CATEGORIES, LOCALES, OCCURRED, REPORT_KIND_EMERGENCY, STATUSES
from handlers.events import Button, GeoPoint
from handlers.i18n import DEFAULT_LOCALE, catalogue, t
from handlers.localtime import format_datetime, format_short
from handlers.media import is_cleaned, neutral_name
from handlers.rewards import format_vnd
from handlers.security import Keyring, format_code
from storage.models import ContactRoute, MediaBlob, Officer, Report, Reward
from storage.types import utcnow

#: Telegram's limit for a message text (UTF-16 code units), and for a caption.
TEXT_LIMIT: Final = 4096
CAPTION_LIMIT: Final = 1024
#: At most this many reports are listed in one digest message.
DIGEST_MAX: Final = 30
MAPS_URL: Final = "https://www.google.com/maps?q={lat:.6f},{lon:.6f}"

ACK_ACTION: Final = "ack"
OPEN_ACTION: Final = "open"


@dataclass
class CardMedia:
    """One piece of evidence: cleaned image bytes (re-uploaded), or a channel file reference
    (re-sent by id). Never a pointer to the citizen's own message, which a forward would need."""

    kind: str
    mime: str | None
    content: bytes | None
    file_ref: str | None
    caption: str | None
    #: The neutral name the file is re-sent under (``evidence-1.jpg``), never the sender's.
    file_name: str = "evidence.bin"


@dataclass
class Card:
    """An officer-facing message: HTML ``text`` (≤ 4096), buttons, a map pin, evidence."""

    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    location: GeoPoint | None = None
    media: list[CardMedia] = field(default_factory=list)


#: The citizen channels a card names (its other lines are the same whatever the channel).
CHANNEL_NAMES = frozenset(ChannelName)


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _short_time(moment: datetime) -> str:
    return format_short(moment)


def _e(value: str) -> str:
    return html.escape(value, quote=True)


def _is_emergency(report: Report) -> bool:
    return report.kind == REPORT_KIND_EMERGENCY


def _category(report: Report, locale: str) -> str:
    if _is_emergency(report):
        return t(locale, "officer.card.category_emergency")
    if report.category in CATEGORIES:
        return t(locale, f"cat.{report.category}")
    return "—"


def _unit(report: Report, locale: str) -> str:
    if report.unit is not None:
        return _e(report.unit.name)
    if report.unit_code:
        return _e(report.unit_code)
    return t(locale, "officer.card.no_unit")


def _status(report: Report, locale: str) -> str:
    if report.status in STATUSES:
        return t(locale, f"officer.status.{report.status}")
    return _e(report.status)


def _occurred(report: Report, locale: str) -> str:
    occurred = report.occurred if report.occurred in OCCURRED else "unknown"
    when = t(locale, f"officer.when.{occurred}")
    if report.occurred_text:
        when = f"{when}: {_e(report.occurred_text)}"
    return when


def _injured(report: Report, locale: str) -> str:
    if report.injured == "none":
        return t(locale, "officer.injured.none")
    if report.injured == "yes" or (report.injured_count or 0) > 0:
        if report.injured_count:
            return t(locale, "officer.injured.count", count=report.injured_count)
        return t(locale, "officer.injured.yes")
    return t(locale, "officer.injured.unknown")


def _location_link(latitude: float, longitude: float) -> str:
    url = MAPS_URL.format(lat=latitude, lon=longitude)
    return f'<a href="{_e(url)}">{latitude:.5f}, {longitude:.5f}</a>'


def _header(locale: str, key: str | None) -> str | None:
    if not key:
        return None
    strings = catalogue(locale if locale in LOCALES else DEFAULT_LOCALE)
    for candidate in (key, f"officer.header.{key}"):
        if candidate.startswith(("officer.header.", "card.header.")) and candidate in strings:
            return strings[candidate]
    return None


def _fit_description(description: str, room: int, locale: str) -> str:
    """The escaped description, cut so that it takes at most ``room`` UTF-16 units."""
    escaped = _e(description)
    if utf16_len(escaped) <= room:
        return escaped
    note = t(locale, "officer.card.truncated", total=len(description))
    budget = room - utf16_len(note) - 1
    pieces: list[str] = []
    used = 0
    for char in description:
        piece = _e(char)
        size = utf16_len(piece)
        if used + size > budget:
            break
        pieces.append(piece)
        used += size
    return "".join(pieces).rstrip() + "\n" + note


async def _load_report(session: AsyncSession, report_id: int, *, media: bool) -> Report:
    """The report with its unit and evidence rows, in one statement (joined)."""
    options = [joinedload(Report.unit)]
    if media:
        options.append(joinedload(Report.media))
    result = await session.execute(select(Report).options(*options).where(Report.id == report_id))
    report = result.unique().scalar_one_or_none()
    if report is None:
        raise LookupError(f"report {report_id} does not exist")
    return report


async def _evidence(session: AsyncSession, report: Report, locale: str) -> list[CardMedia]:
    """The report's evidence to re-send; captions are plain text (no parse mode), headed
    with the report's code so that officers know which card a file belongs to."""
    head = t(locale, "officer.card.evidence_caption", code=format_code(report.code))
    blob_ids = [m.blob_id for m in report.media if m.blob_id is not None]
    contents: dict[int, bytes] = {}
    if blob_ids:
        rows = await session.execute(
            select(MediaBlob.id, MediaBlob.content).where(MediaBlob.id.in_(blob_ids))
        )
        contents = {blob_id: content for blob_id, content in rows}
    items: list[CardMedia] = []
    for item in report.media:
        content = contents.get(item.blob_id) if item.blob_id is not None else None
        if content is None and not item.file_ref:
            continue  # nothing left to show (blob purged); the count on the card still says so
        caption = f"{head}\n{item.caption}" if item.caption else head
        items.append(
            CardMedia(
                kind=item.kind,
                mime=item.mime,
                content=content,
                file_ref=None if content is not None else item.file_ref,
                caption=caption[:CAPTION_LIMIT],
                file_name=neutral_name(item.position, item.mime),
            )
        )
    return items


async def report_card(
    session: AsyncSession,
    report_id: int,
    *,
    locale: str,
    header_key: str | None = None,
    media: bool = True,
    mode: str | None = None,
    moved: bool = False,
    transfer_targets: Sequence[tuple[str, str]] = (),
    keyring: Keyring | None = None,
) -> Card:
    """The full card of one report, with its map pin and evidence.

    ``header_key`` names a line shown first: ``escalated``, ``rerouted`` or ``reopened``
    (short for ``officer.header.<name>``), or any full catalogue key; an unknown one is left
    out. ``media=False`` leaves the evidence out of the returned card (to re-render a posted
    card's text); the evidence count stays. ``mode`` shows a picker instead of the actions
    (``outcomes``, ``transfer`` with ``transfer_targets`` as (key, name) pairs, ``arrest``);
    ``moved`` renders a card the report has left (transferred): no buttons, and where it went.
    Raises ``LookupError`` when the report does not exist.
    """
    queue_names = dict(transfer_targets)
    report = await _load_report(session, report_id, media=True)
    code = format_code(report.code)
    emergency = _is_emergency(report)
    head: list[str] = []
    header = _header(locale, header_key)
    if header:
        head.append(header)
    title_key = "officer.card.emergency_title" if emergency else "officer.card.tip_title"
    head.append(t(locale, title_key, code=code))
    head.append(t(locale, "officer.card.category", category=_category(report, locale)))
    head.append(t(locale, "officer.card.unit", unit=_unit(report, locale)))
    head.append(t(locale, "officer.card.occurred", when=_occurred(report, locale)))
    head.append(t(locale, "officer.card.received", received=format_datetime(report.created_at)))
    if report.channel in CHANNEL_NAMES:
        channel = t(locale, f"web.channel.{report.channel}")
        head.append(t(locale, "web.card.channel", channel=channel))
    if emergency:
        head.append(t(locale, "officer.card.injured", injured=_injured(report, locale)))
    location = None
    if report.latitude is not None and report.longitude is not None:
        location = GeoPoint(report.latitude, report.longitude)
        link = _location_link(report.latitude, report.longitude)
        head.append(t(locale, "officer.card.location", link=link))
    if report.place_text:
        head.append(t(locale, "officer.card.place_text", place=_e(report.place_text)))
    count = len(report.media)
    if count:
        head.append(t(locale, "officer.card.evidence", count=count))
        uncleaned = [
            str(m.position + 1)
            for m in report.media
            if m.blob_id is None or not is_cleaned(m.mime)
        ]
        if uncleaned:
            head.append(t(locale, "evidence.not_cleaned", files=", ".join(uncleaned)))
    else:
        head.append(t(locale, "officer.card.no_evidence"))
    assignee = t(locale, "officer.card.unassigned")
    if report.assigned_officer_id is not None:
        officer = await session.get(Officer, report.assigned_officer_id)
        if officer is not None:
            assignee = _e(officer.display_name)
    status = t(locale, "officer.card.status", status=_status(report, locale), assignee=assignee)
    if report.outcome:
        status += "\n" + t(locale, "card.outcome", outcome=t(locale, f"outcome.{report.outcome}"))
    if moved:
        where = queue_names.get(report.queue_key or "", report.queue_key or "—")
        status += "\n" + t(locale, "card.transferred_to", queue=_e(where))
    if report.contact_mode == "phone" and keyring is not None:
        # The one identifying detail officers may see: a number the tipster chose to leave.
        route = await session.scalar(
            select(ContactRoute).where(ContactRoute.report_id == report.id)
        )
        if route is not None and route.phone:
            phone = keyring.decrypt(route.phone).get("phone", "")
            status += "\n" + t(locale, "card.phone", phone=_e(str(phone)))
    reward = await session.scalar(
        select(Reward).where(Reward.report_id == report.id).order_by(Reward.id.desc())
    )
    if reward is not None:
        status += "\n" + t(
            locale,
            "reward.card_line",
            amount=format_vnd(reward.amount_vnd),
            status=t(locale, f"reward.status.{reward.status}"),
        )
    top = "\n".join(head)
    text = f"{top}\n\n{status}"
    if report.description:
        label = t(locale, "officer.card.description")
        frame_open, frame_close = "<blockquote expandable>", "</blockquote>"
        fixed = f"{top}\n\n{label}\n{frame_open}{frame_close}\n\n{status}"
        room = TEXT_LIMIT - utf16_len(fixed)
        body = _fit_description(report.description, room, locale)
        text = f"{top}\n\n{label}\n{frame_open}{body}{frame_close}\n\n{status}"
    buttons: list[list[Button]] = []
    if moved:
        buttons = []
    elif mode is not None:
        buttons = card_actions.picker_buttons(
            report_id=report.id, mode=mode, locale=locale, queues=transfer_targets
        )
    else:
        buttons = card_actions.action_buttons(
            report_id=report.id,
            kind=report.kind,
            status=report.status,
            locale=locale,
            outcome=report.outcome,
            reward_status=reward.status if reward is not None else None,
        )
    evidence = await _evidence(session, report, locale) if media else []
    return Card(text=text, buttons=buttons, location=location, media=evidence)


async def digest_card(session: AsyncSession, report_ids: Sequence[int], *, locale: str) -> Card:
    """One message listing up to :data:`DIGEST_MAX` reports, one line and one button each.

    Reports that no longer exist are left out. The button opens the full card
    (``r:open:<id>``).
    """
    if len(report_ids) > DIGEST_MAX:
        raise ValueError(f"a digest lists at most {DIGEST_MAX} reports, got {len(report_ids)}")
    rows = await session.scalars(
        select(Report).options(selectinload(Report.unit)).where(Report.id.in_(report_ids))
    )
    by_id = {report.id: report for report in rows.all()}
    reports = [by_id[i] for i in dict.fromkeys(report_ids) if i in by_id]
    title = t(locale, "officer.digest.title", count=len(reports))
    hint = t(locale, "officer.digest.hint")

    def line(number: int, report: Report, short: bool) -> str:
        unit = _unit(report, locale)
        if short and report.unit is not None:  # only with absurdly long unit names
            unit = _e(report.unit.name[:24])
        return t(
            locale,
            "officer.digest.line",
            number=number,
            icon="🚑 " if _is_emergency(report) else "",
            code=format_code(report.code),
            category=_category(report, locale),
            unit=unit,
            received=_short_time(report.created_at),
        )

    lines = [line(n, r, False) for n, r in enumerate(reports, start=1)]
    text = "\n".join([title, *lines, "", hint])
    if utf16_len(text) > TEXT_LIMIT:
        lines = [line(n, r, True) for n, r in enumerate(reports, start=1)]
        text = "\n".join([title, *lines, "", hint])
    buttons: list[list[Button]] = []
    row: list[Button] = []
    for report in reports:
        row.append(Button(format_code(report.code), card_actions.data(OPEN_ACTION, report.id)))
        if len(row) == 3:
            buttons.append(row)
            row = []
    if row:
        buttons.append(row)
    return Card(text=text, buttons=buttons)


def _elapsed(since: datetime, now: datetime, locale: str) -> str:
    minutes = max(0, int((now - since).total_seconds() // 60))
    if minutes < 120:
        return t(locale, "officer.elapsed.minutes", count=minutes)
    if minutes < 48 * 60:
        return t(locale, "officer.elapsed.hours", count=minutes // 60)
    return t(locale, "officer.elapsed.days", count=minutes // (24 * 60))


REMINDER_REASONS: Final = frozenset({"unacknowledged", "unclaimed", "pending"})


async def reminder_card(
    session: AsyncSession,
    report_id: int,
    *,
    locale: str,
    reason: str = "pending",
    now: datetime | None = None,
) -> Card:
    """A short reminder about one report, with its open (and, for a new emergency,
    acknowledge) button. ``reason`` is ``unacknowledged`` (an emergency), ``unclaimed`` (a
    tip) or ``pending``."""
    report = await _load_report(session, report_id, media=False)
    key = reason if reason in REMINDER_REASONS else "pending"
    code = format_code(report.code)
    text = t(
        locale,
        f"officer.reminder.{key}",
        code=code,
        elapsed=_elapsed(report.created_at, now or utcnow(), locale),
    )
    row = [
        Button(t(locale, "officer.btn.open", code=code), card_actions.data(OPEN_ACTION, report.id))
    ]
    buttons = [row]
    if _is_emergency(report) and report.status == "new":
        buttons.insert(
            0, [Button(t(locale, "officer.btn.ack"), card_actions.data(ACK_ACTION, report.id))]
        )
    return Card(text=text, buttons=buttons)


ALERT_REASONS: Final = frozenset({"chat_unreachable", "generic"})


def alert_card(*, locale: str, reason: str, **values: object) -> Card:
    """A system alert for the duty queue (no report content). Values are HTML-escaped.

    ``chat_unreachable`` takes ``queue``, ``chat`` and ``error``; ``generic`` takes ``error``.
    """
    key = reason if reason in ALERT_REASONS else "generic"
    needed = {"chat_unreachable": ("queue", "chat", "error"), "generic": ("error",)}[key]
    escaped = {name: _e(str(values.get(name, "—"))[:500]) for name in needed}
    return Card(text=t(locale, f"officer.alert.{key}", **escaped))
