"""The outbox contract: what a row says, in one typed home.

Every message that leaves tinbao is an ``outbox`` row written in the transaction that caused it
(``docs/delivery.md``). A row has a :class:`Kind`, a :class:`Destination`, a :class:`Priority`
and a payload; each kind has one payload dataclass here that turns to and from the JSON of the
row's ``payload`` column. Producers (intake, escalation, triage, the report actions, rewards)
call :func:`enqueue` with a payload; the senders in ``bot/delivery`` read it back with
:func:`payload_of`.

The delivery worker keeps its own progress in the same JSON (``done``, ``msg``, ``sent``,
``skipped``, ``digest``); the payload classes ignore those keys, so a half-sent row still reads
back as what its producer wrote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any, ClassVar, Final, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.events import Button, Keyboard, Reply
from storage.models import OutboxMessage
from storage.repositories import Outbox


class Kind(StrEnum):
    """What an outbox row is, and so which sender takes it."""

    #: A report's card in an officers' chat (text, map pin, evidence).
    REPORT_CARD = "report_card"
    #: Several waiting tips folded into one message (made by the worker, never by a producer).
    DIGEST = "digest"
    #: A short reminder about a report (unclaimed, unacknowledged), a reply to its card if any.
    REMINDER = "reminder"
    #: A notice to the duty queue (a chat that cannot be reached).
    ALERT = "alert"
    #: A plain message to an officers' chat: a prompt, a list, a confirmation, a proposal.
    CHAT_TEXT = "chat_text"
    #: A tipster's answer or addition, relayed under the report's card.
    RELAY_TO_OFFICERS = "relay_to_officers"
    #: A message to the tipster, through the channel their route names.
    CITIZEN_MESSAGE = "citizen_message"
    #: A file for an officers' chat (the monthly statistics report), rendered when sent.
    DOCUMENT = "document"
    #: The answer to a citizen's message that could not be sent at once (the channel failed
    #: after the retries, or a send timed out): it waits here, in order with the chat's others.
    CITIZEN_ANSWER = "citizen_answer"
    #: Timers: fired once by the timer worker, never sent.
    TIMER_ESCALATE = "timer.escalate"
    TIMER_REMIND_UNCLAIMED = "timer.remind_unclaimed"
    #: The first of a month: post the month before's statistics report.
    TIMER_MONTHLY_REPORT = "timer.monthly_report"

    @property
    def is_timer(self) -> bool:
        return self.value.startswith(TIMER_PREFIX)


TIMER_PREFIX: Final = "timer."
#: Kinds the officers' Telegram sender takes.
OFFICER_KINDS: Final = (
    Kind.REPORT_CARD,
    Kind.DIGEST,
    Kind.REMINDER,
    Kind.ALERT,
    Kind.CHAT_TEXT,
    Kind.RELAY_TO_OFFICERS,
    Kind.DOCUMENT,
)
TIMER_KINDS: Final = (Kind.TIMER_ESCALATE, Kind.TIMER_REMIND_UNCLAIMED, Kind.TIMER_MONTHLY_REPORT)


class Priority(IntEnum):
    """Higher goes first. At or above :attr:`EMERGENCY` a row may use the emergency reserve of a
    group's flood budget and is never folded into a digest."""

    TIP = 0
    #: A digest goes before the tips still waiting, after emergencies.
    DIGEST = 5
    #: A card an officer opened (from a digest, ``/open``) or a transferred card.
    OPEN = 5
    #: Messages in a conversation with officers, and a tipster's relayed answer.
    CHAT = 6
    EMERGENCY = 10


class Status(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    #: Folded into a digest (the digest's row id is in the payload).
    FOLDED = "folded"
    #: A fired timer.
    DONE = "done"
    #: A timer no longer needed (an acknowledgement stops escalation).
    CANCELLED = "cancelled"


# ------------------------------------------------------------------------------ destinations


class Where(StrEnum):
    #: The provincial duty queue.
    DUTY = "duty"
    #: The queue that serves a unit (the duty queue when none does).
    UNIT = "unit"
    #: A queue by its key in the queue map.
    QUEUE = "queue"
    #: One officers' chat (a group, or a forum topic in one), where an officer acted.
    CHAT = "chat"
    #: The tipster of a report, through their route (decrypted only when sending).
    REPORT = "report"
    #: A citizen's chat by the keyed hash of the sender (their answers waiting in order).
    ANSWER = "answer"
    #: Not sent: a timer.
    TIMER = "timer"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a row goes, as stored in its ``destination`` column.

    ``duty``, ``timer``, ``unit:<code>``, ``queue:<key>``, ``chat:<chat_id>[/<thread_id>]``,
    ``report:<id>``, ``answer:<sender key>``. :meth:`parse` raises ``ValueError`` on anything
    else. A citizen is never named by a chat id: by report, or by the keyed sender hash.
    """

    where: Where
    unit: str | None = None
    queue: str | None = None
    chat_id: int | None = None
    thread_id: int | None = None
    report_id: int | None = None
    sender_key: str | None = None

    @classmethod
    def duty(cls) -> Destination:
        return cls(Where.DUTY)

    @classmethod
    def timer(cls) -> Destination:
        return cls(Where.TIMER)

    @classmethod
    def for_unit(cls, code: str | None) -> Destination:
        """The unit's queue; the duty queue for a report without a unit."""
        return cls(Where.UNIT, unit=code) if code else cls.duty()

    @classmethod
    def for_queue(cls, key: str) -> Destination:
        return cls(Where.QUEUE, queue=key)

    @classmethod
    def chat(cls, chat_id: int, thread_id: int | None = None) -> Destination:
        return cls(Where.CHAT, chat_id=chat_id, thread_id=thread_id)

    @classmethod
    def citizen(cls, report_id: int) -> Destination:
        return cls(Where.REPORT, report_id=report_id)

    @classmethod
    def answer(cls, sender_key: str) -> Destination:
        """A citizen's chat, by the keyed hash that stands for them (never a chat id)."""
        return cls(Where.ANSWER, sender_key=sender_key)

    @property
    def chat_key(self) -> str | None:
        """``<chat_id>`` or ``<chat_id>/<thread_id>`` for a chat destination."""
        if self.chat_id is None:
            return None
        return str(self.chat_id) if self.thread_id is None else f"{self.chat_id}/{self.thread_id}"

    def __str__(self) -> str:
        match self.where:
            case Where.UNIT:
                return f"unit:{self.unit}"
            case Where.QUEUE:
                return f"queue:{self.queue}"
            case Where.CHAT:
                return f"chat:{self.chat_key}"
            case Where.REPORT:
                return f"report:{self.report_id}"
            case Where.ANSWER:
                return f"answer:{self.sender_key}"
            case _:
                return self.where.value

    @classmethod
    def parse(cls, text: str) -> Destination:
        head, sep, rest = text.partition(":")
        if not sep:
            if text in (Where.DUTY, Where.TIMER):
                return cls(Where(text))
            raise ValueError(f"unknown destination {text!r}")
        if not rest:
            raise ValueError(f"unknown destination {text!r}")
        if head == Where.UNIT:
            return cls(Where.UNIT, unit=rest)
        if head == Where.QUEUE:
            return cls(Where.QUEUE, queue=rest)
        if head == Where.REPORT:
            return cls(Where.REPORT, report_id=int(rest))
        if head == Where.ANSWER:
            return cls.answer(rest)
        if head == Where.CHAT:
            chat, _, thread = rest.partition("/")
            return cls.chat(int(chat), int(thread) if thread else None)
        raise ValueError(f"unknown destination {text!r}")


# ------------------------------------------------------------------------------ payloads

#: Keys the delivery worker keeps in a row's payload for its own progress.
PROGRESS_KEYS: Final = frozenset({"done", "msg", "sent", "skipped", "digest"})


@dataclass(frozen=True, slots=True)
class Payload:
    """Base of the per-kind payloads: JSON in, JSON out."""

    KIND: ClassVar[Kind]
    #: Priority of a row of this kind unless the producer says otherwise.
    PRIORITY: ClassVar[Priority] = Priority.TIP

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls: type[P], data: dict[str, Any] | None) -> P:
        data = data or {}
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True, slots=True)
class CardPayload(Payload):
    KIND: ClassVar[Kind] = Kind.REPORT_CARD

    report_id: int
    #: A catalogue key for a line above the card (``escalated``, ``rerouted``, a transfer).
    header: str | None = None


@dataclass(frozen=True, slots=True)
class DigestPayload(Payload):
    KIND: ClassVar[Kind] = Kind.DIGEST
    PRIORITY: ClassVar[Priority] = Priority.DIGEST

    report_ids: list[int] = field(default_factory=list)
    #: The folded rows.
    rows: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReminderPayload(Payload):
    KIND: ClassVar[Kind] = Kind.REMINDER

    report_id: int
    #: ``unacknowledged`` or ``unclaimed``.
    reason: str = "pending"


@dataclass(frozen=True, slots=True)
class AlertPayload(Payload):
    KIND: ClassVar[Kind] = Kind.ALERT

    #: ``chat_unreachable``.
    reason: str
    queue: str | None = None
    chat: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChatButton:
    label: str
    data: str


@dataclass(frozen=True, slots=True)
class ChatTextPayload(Payload):
    KIND: ClassVar[Kind] = Kind.CHAT_TEXT
    PRIORITY: ClassVar[Priority] = Priority.CHAT

    text: str
    #: Ask the officer's client to open a reply (a prompt for a reason, a question).
    force_reply: bool = False
    #: Reply to this report's active card in the chat, when it has one there.
    reply_to_report: int | None = None
    #: Rows of inline buttons (``{"label": ..., "data": ...}`` in JSON).
    buttons: list[list[dict[str, str]]] | None = None

    def button_rows(self) -> list[list[ChatButton]]:
        return [
            [ChatButton(str(b["label"]), str(b["data"])) for b in row]
            for row in (self.buttons or [])
        ]

    def to_json(self) -> dict[str, Any]:
        # Every key is kept (even when empty): the officers' chat code reads them as written.
        return {
            "text": self.text,
            "force_reply": self.force_reply,
            "reply_to_report": self.reply_to_report,
            "buttons": self.buttons,
        }


@dataclass(frozen=True, slots=True)
class RelayPayload(Payload):
    KIND: ClassVar[Kind] = Kind.RELAY_TO_OFFICERS
    PRIORITY: ClassVar[Priority] = Priority.CHAT

    relay_id: int
    #: An addition the tipster sent on their own, not the answer to a question.
    addition: bool = False


@dataclass(frozen=True, slots=True)
class CitizenPayload(Payload):
    """A message to the tipster: a relayed question (``relay_id``) or a catalogue message
    (``key`` with ``values``). ``secret`` holds encrypted values (a claim code), wiped from the
    row once delivered or dropped."""

    KIND: ClassVar[Kind] = Kind.CITIZEN_MESSAGE

    key: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    relay_id: int | None = None
    secret: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = Payload.to_json(self)
        if not self.values:
            data.pop("values", None)
        return data


def reply_to_json(reply: Reply) -> dict[str, Any]:
    """A neutral reply as JSON (no photo: a direct answer never carries one)."""
    data: dict[str, Any] = {"text": reply.text}
    if reply.buttons:
        data["buttons"] = [
            [{"label": b.label, "data": b.data} for b in row] for row in reply.buttons
        ]
    if reply.keyboard is not None:
        data["keyboard"] = {
            "request_location": reply.keyboard.request_location,
            "request_contact": reply.keyboard.request_contact,
            "labels": list(reply.keyboard.labels),
        }
    if reply.remove_keyboard:
        data["remove_keyboard"] = True
    return data


def reply_from_json(data: dict[str, Any]) -> Reply:
    keyboard = data.get("keyboard")
    return Reply(
        text=str(data.get("text") or ""),
        buttons=[
            [Button(str(b["label"]), str(b["data"])) for b in row]
            for row in data.get("buttons") or []
        ],
        keyboard=Keyboard(
            request_location=keyboard.get("request_location"),
            request_contact=keyboard.get("request_contact"),
            labels=tuple(keyboard.get("labels") or ()),
        )
        if isinstance(keyboard, dict)
        else None,
        remove_keyboard=bool(data.get("remove_keyboard")),
    )


@dataclass(frozen=True, slots=True)
class AnswerPayload(Payload):
    """The answer to a citizen's message that waits in the outbox: ``route`` is the channel and
    chat, encrypted (as a report's route back is); ``replies`` what to send, in order, as the
    channel would have sent them (:func:`reply_to_json`)."""

    KIND: ClassVar[Kind] = Kind.CITIZEN_ANSWER
    PRIORITY: ClassVar[Priority] = Priority.CHAT

    route: str
    replies: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[Reply]:
        return [reply_from_json(r) for r in self.replies if isinstance(r, dict)]


@dataclass(frozen=True, slots=True)
class DocumentPayload(Payload):
    """A file for an officers' chat, named by what it is, not held in the row: the sender renders
    it when it sends (:class:`DocumentRenderer`), so a row stays a few bytes and a retry sends
    the same document again."""

    KIND: ClassVar[Kind] = Kind.DOCUMENT

    #: Which document (``stats_report``: the monthly statistics report).
    document: str
    #: Its period (``2026-05``).
    period: str
    #: The language of the document and its caption (the officers' locale when absent).
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """A rendered document: the file's bytes, its name and the caption under it."""

    content: bytes
    file_name: str
    caption: str


class DocumentRenderer(Protocol):
    """Renders the document a :class:`DocumentPayload` names; ``LookupError`` for one it does
    not know (the row fails), any other error is retried."""

    async def render(self, payload: DocumentPayload, locale: str) -> Document: ...


@dataclass(frozen=True, slots=True)
class TimerPayload(Payload):
    KIND: ClassVar[Kind] = Kind.TIMER_ESCALATE

    report_id: int


@dataclass(frozen=True, slots=True)
class MonthlyReportTimerPayload(Payload):
    """Fires on the first of the month after ``period`` (``2026-05``), local time."""

    KIND: ClassVar[Kind] = Kind.TIMER_MONTHLY_REPORT

    period: str


PAYLOADS: Final[dict[Kind, type[Payload]]] = {
    Kind.REPORT_CARD: CardPayload,
    Kind.DIGEST: DigestPayload,
    Kind.REMINDER: ReminderPayload,
    Kind.ALERT: AlertPayload,
    Kind.CHAT_TEXT: ChatTextPayload,
    Kind.RELAY_TO_OFFICERS: RelayPayload,
    Kind.CITIZEN_MESSAGE: CitizenPayload,
    Kind.DOCUMENT: DocumentPayload,
    Kind.CITIZEN_ANSWER: AnswerPayload,
    Kind.TIMER_ESCALATE: TimerPayload,
    Kind.TIMER_REMIND_UNCLAIMED: TimerPayload,
    Kind.TIMER_MONTHLY_REPORT: MonthlyReportTimerPayload,
}


def payload_of(kind: str, data: dict[str, Any] | None) -> Payload:
    """A row's payload as its kind's dataclass; ``LookupError`` for an unknown kind, ``TypeError``
    for a payload that lacks a required field."""
    try:
        cls = PAYLOADS[Kind(kind)]
    except ValueError as exc:
        raise LookupError(f"unknown outbox kind {kind!r}") from exc
    return cls.from_json(data)


def enqueue(
    session: AsyncSession,
    payload: Payload,
    destination: Destination,
    *,
    kind: Kind | None = None,
    report_id: int | None = None,
    dedupe_key: str | None = None,
    due: datetime | None = None,
    priority: int | None = None,
) -> OutboxMessage:
    """Add an outbox row in the caller's transaction (nothing commits here).

    ``kind`` is the payload's own unless given (the two timer kinds share one payload).
    """
    row_kind = kind or payload.KIND
    if not isinstance(payload, PAYLOADS[row_kind]):
        raise TypeError(f"{type(payload).__name__} is not a payload of {row_kind}")
    return Outbox(session).enqueue(
        kind=row_kind.value,
        destination=str(destination),
        payload=payload.to_json(),
        report_id=report_id,
        dedupe_key=dedupe_key,
        due=due,
        priority=int(payload.PRIORITY if priority is None else priority),
    )


def outbox_row(
    payload: Payload,
    destination: Destination,
    *,
    kind: Kind | None = None,
    report_id: int | None = None,
    dedupe_key: str | None = None,
    due: datetime | None = None,
    priority: int | None = None,
) -> OutboxMessage:
    """An outbox row as :func:`enqueue` adds it, not added: for a write that stores it with
    other rows (:meth:`storage.repositories.Reports.store`)."""
    row_kind = kind or payload.KIND
    if not isinstance(payload, PAYLOADS[row_kind]):
        raise TypeError(f"{type(payload).__name__} is not a payload of {row_kind}")
    return Outbox.row(
        kind=row_kind.value,
        destination=str(destination),
        payload=payload.to_json(),
        report_id=report_id,
        dedupe_key=dedupe_key,
        due=due,
        priority=int(payload.PRIORITY if priority is None else priority),
    )


async def enqueue_once(
    session: AsyncSession,
    payload: Payload,
    destination: Destination,
    *,
    dedupe_key: str,
    kind: Kind | None = None,
    due: datetime | None = None,
    priority: int | None = None,
) -> bool:
    """Add an outbox row unless one with ``dedupe_key`` exists (ever, in any process), in the
    caller's transaction; True when added."""
    row_kind = kind or payload.KIND
    if not isinstance(payload, PAYLOADS[row_kind]):
        raise TypeError(f"{type(payload).__name__} is not a payload of {row_kind}")
    return await Outbox(session).enqueue_absent(
        kind=row_kind.value,
        destination=str(destination),
        payload=payload.to_json(),
        dedupe_key=dedupe_key,
        due=due,
        priority=int(payload.PRIORITY if priority is None else priority),
    )


__all__ = [
    "OFFICER_KINDS",
    "PAYLOADS",
    "PROGRESS_KEYS",
    "TIMER_KINDS",
    "TIMER_PREFIX",
    "AlertPayload",
    "AnswerPayload",
    "CardPayload",
    "ChatButton",
    "ChatTextPayload",
    "CitizenPayload",
    "Destination",
    "DigestPayload",
    "Document",
    "DocumentPayload",
    "DocumentRenderer",
    "Kind",
    "MonthlyReportTimerPayload",
    "Payload",
    "Priority",
    "RelayPayload",
    "ReminderPayload",
    "Status",
    "TimerPayload",
    "Where",
    "enqueue",
    "enqueue_once",
    "outbox_row",
    "payload_of",
    "reply_from_json",
    "reply_to_json",
]
