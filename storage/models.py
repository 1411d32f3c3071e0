"""SQLAlchemy 2 typed models: the whole schema of tinbao.

Anonymity rule: no table here holds a tipster's channel user id, username, name or phone number
in clear. The route back to a tipster lives in :class:`ContactRoute`, encrypted, and is found
through a keyed hash (HMAC) of channel and user id. Drafts and rate limits use the same HMAC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.stats_rollup import MEASURES, PERIOD, STATE_TABLE
from storage.types import BigIntKey, JSONType, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


class Unit(Base):
    """A receiving police unit: one commune-level unit (xã, phường, đặc khu)."""

    __tablename__ = "units"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    division_type: Mapped[str] = mapped_column(String(32))
    codename: Mapped[str] = mapped_column(String(200))
    province_code: Mapped[int] = mapped_column(Integer, index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Report(Base):
    """A crime tip-off (``kind='tip'``) or a traffic-accident emergency (``'emergency'``)."""

    __tablename__ = "reports"
    __table_args__ = (
        Index("ix_reports_status_created", "status", "created_at"),
        Index("ix_reports_unit_created", "unit_code", "created_at"),
        Index("ix_reports_created_id", "created_at", "id"),
        # Statistics count resolutions by month and year.
        Index(
            "ix_reports_resolved_at",
            "resolved_at",
            postgresql_where=text("status = 'resolved'"),
            sqlite_where=text("status = 'resolved'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(32))
    unit_code: Mapped[str | None] = mapped_column(ForeignKey("units.code"))
    latitude: Mapped[float | None]
    longitude: Mapped[float | None]
    place_text: Mapped[str | None] = mapped_column(Text)
    occurred: Mapped[str] = mapped_column(String(16), default="unknown")
    occurred_text: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    injured: Mapped[str | None] = mapped_column(String(16))
    injured_count: Mapped[int | None]
    contact_mode: Mapped[str] = mapped_column(String(16))
    pin_hash: Mapped[str] = mapped_column(String(200))
    locale: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="new")
    outcome: Mapped[str | None] = mapped_column(String(32))
    subjects_handled: Mapped[int | None]
    citizen_assisted_arrest: Mapped[bool | None]
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), index=True)
    reject_reason: Mapped[str | None] = mapped_column(Text)
    assigned_officer_id: Mapped[int | None] = mapped_column(BigInteger)
    #: A queue the report was transferred to, overriding its unit's queue.
    queue_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    claimed_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]

    media: Mapped[list[ReportMedia]] = relationship(
        back_populates="report", order_by="ReportMedia.position", lazy="raise"
    )
    unit: Mapped[Unit | None] = relationship(lazy="raise")


class MediaBlob(Base):
    """Bytes of a stored file, already cleaned (images re-encoded without metadata)."""

    __tablename__ = "media_blobs"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    mime: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportMedia(Base):
    """One piece of evidence attached to a report."""

    __tablename__ = "report_media"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(
        ForeignKey("reports.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    mime: Mapped[str | None] = mapped_column(String(100))
    size: Mapped[int | None] = mapped_column(Integer)
    #: The channel's own file reference, used to re-send non-image media (never to forward).
    file_ref: Mapped[str | None] = mapped_column(String(256))
    blob_id: Mapped[int | None] = mapped_column(ForeignKey("media_blobs.id"), index=True)
    caption: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    report: Mapped[Report] = relationship(back_populates="media", lazy="raise")


class ReportEvent(Base):
    """The audit trail: every change of state is one row (who, when, from, to, why)."""

    __tablename__ = "report_events"
    __table_args__ = (Index("ix_report_events_report_at", "report_id", "at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    #: ``citizen``, ``officer``, ``admin`` or ``system``. A citizen actor never has an id.
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class ContactRoute(Base):
    """The encrypted route back to a tipster, found only through a keyed hash."""

    __tablename__ = "contact_routes"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(
        ForeignKey("reports.id", ondelete="CASCADE"), unique=True
    )
    sender_key: Mapped[str] = mapped_column(String(64), index=True)
    #: Fernet token of ``{"channel": ..., "chat_id": ...}``.
    route: Mapped[str] = mapped_column(Text)
    #: Fernet token of the phone number the tipster chose to leave, if any.
    phone: Mapped[str | None] = mapped_column(Text)
    blocked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    """One citizen's conversation state and draft, saved on every step."""

    __tablename__ = "conversations"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    locale: Mapped[str | None] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(32), default="idle")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    step: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it)


class ProcessedUpdate(Base):
    """Channel update ids already handled, so a duplicate delivery has no effect."""

    __tablename__ = "processed_updates"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OutboxMessage(Base):
    """A message waiting to be delivered to officers, written with what caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_due", "status", "next_attempt_at"),
        Index("ix_outbox_chat_sent", "chat_key", "sent_at"),
        UniqueConstraint("dedupe_key"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    report_id: Mapped[int | None] = mapped_column(
        ForeignKey("reports.id", ondelete="CASCADE"), index=True
    )
    #: Where it goes, e.g. ``unit:30307`` (resolved to a queue when delivered) or ``duty``; a
    #: tipster only ever by report (``report:<id>``) or keyed hash (``answer:<sender key>``).
    destination: Mapped[str] = mapped_column(String(96))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    #: Higher goes first (emergencies).
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: The chat it was resolved to (``"<chat_id>"`` or ``"<chat_id>/<thread_id>"``).
    chat_key: Mapped[str | None] = mapped_column(String(64))
    #: Messages it cost in the chat's flood budget once sent.
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    #: A worker's lease on a row being sent; a lapsed lease returns the row to the queue.
    claimed_until: Mapped[datetime | None]


class CardPost(Base):
    """Where a report's card (or a digest listing it) was posted, so it can be edited."""

    __tablename__ = "card_posts"
    #: One row per report and message: a digest message lists many reports.
    __table_args__ = (UniqueConstraint("chat_id", "message_id", "report_id"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(
        ForeignKey("reports.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16), default="telegram")
    chat_id: Mapped[int] = mapped_column(BigInteger)
    thread_id: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(BigInteger)
    #: ``card`` (the full card) or ``digest`` (one line in a digest message).
    kind: Mapped[str] = mapped_column(String(16), default="card")
    #: False once the report moved on (transferred); the card then says where it went.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Officer(Base):
    """A member of the police: officer, commander or admin. Officers are not anonymous.

    The same registry serves the chat (by Telegram user id) and the web panel (by username).
    """

    __tablename__ = "officers"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(200))
    #: ``officer``, ``commander`` or ``admin``.
    role: Mapped[str] = mapped_column(String(16), default="officer")
    telegram_user_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    username: Mapped[str | None] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    #: Bumped to end every panel session of the account (sign-out, new password, revocation).
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))

    scopes: Mapped[list[OfficerScope]] = relationship(
        back_populates="officer", lazy="selectin", cascade="all, delete-orphan"
    )


class OfficerScope(Base):
    """A queue an officer serves (``*`` = every queue)."""

    __tablename__ = "officer_scopes"
    __table_args__ = (UniqueConstraint("officer_id", "queue_key"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    officer_id: Mapped[int] = mapped_column(ForeignKey("officers.id", ondelete="CASCADE"))
    queue_key: Mapped[str] = mapped_column(String(64), index=True)

    officer: Mapped[Officer] = relationship(back_populates="scopes", lazy="raise")


class RelayMessage(Base):
    """One message of the anonymous two-way thread between officers and a tipster."""

    __tablename__ = "relay_messages"
    __table_args__ = (Index("ix_relay_messages_report_at", "report_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    #: ``to_citizen`` (a question from the police) or ``to_officers`` (the tipster's answer).
    direction: Mapped[str] = mapped_column(String(16))
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    text: Mapped[str | None] = mapped_column(Text)
    media_kind: Mapped[str | None] = mapped_column(String(16))
    blob_id: Mapped[int | None] = mapped_column(ForeignKey("media_blobs.id"))
    file_ref: Mapped[str | None] = mapped_column(String(256))
    latitude: Mapped[float | None]
    longitude: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Reward(Base):
    """A reward for a tipster: proposed, then approved or rejected, then paid at most once."""

    __tablename__ = "rewards"
    __table_args__ = (
        # At most one active (not rejected) reward per report.
        Index(
            "uq_rewards_active_report",
            "report_id",
            unique=True,
            postgresql_where=text("status <> 'rejected'"),
            sqlite_where=text("status <> 'rejected'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    amount_vnd: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    #: ``proposed``, ``approved``, ``rejected`` or ``paid``.
    status: Mapped[str] = mapped_column(String(16), default="proposed")
    proposed_by_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    #: Keyed hash of the one-time claim code; the code itself is never stored.
    claim_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    paid_by_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    paid_at: Mapped[datetime | None]
    payout_reference: Mapped[str | None] = mapped_column(String(200))
    #: A letter of commendation with the reward, decided on approval: ``individual`` (to the
    #: tipster) or ``collective`` (to a group of citizens); None without one. Counted by kind
    #: in the monthly report.
    commendation: Mapped[str | None] = mapped_column(String(16))


class AuditEvent(Base):
    """An audit event that is not about one report: enrolments, revocations, panel sign-ins."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    #: ``chat``, ``web`` or ``cli``.
    via: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    data: Mapped[dict[str, Any] | None]


class RateHit(Base):
    """One counted attempt (a submitted report, a wrong PIN) under a hashed key."""

    __tablename__ = "rate_hits"
    __table_args__ = (Index("ix_rate_hits_scope_key_at", "scope", "key", "at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ZaloToken(Base):
    """The Zalo OA's OAuth tokens, encrypted; one row per OA (``key`` is the app id's hash).

    The refresh token is single-use and rotates: the new pair is saved here, in the same
    transaction that holds this row locked, before the new access token is used.
    """

    __tablename__ = "zalo_tokens"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Fernet token of ``{"access_token": ..., "refresh_token": ...}``.
    tokens: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]
    refreshed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ZaloInbox(Base):
    """Zalo updates written down before anything is done with them (polling and webhooks).

    ``msg_key`` is a hash of the channel's message id, unique per channel, so a redelivery is
    recognised; the update itself is encrypted (it carries the citizen's Zalo id) and dropped
    once handled.
    """

    __tablename__ = "zalo_inbox"
    __table_args__ = (UniqueConstraint("channel", "msg_key"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    msg_key: Mapped[str] = mapped_column(String(64))
    #: Fernet token of the raw update; ``None`` once handled.
    payload: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    handled_at: Mapped[datetime | None]


# --------------------------------------------------------------------------- statistics rollups
# Kept by triggers on ``reports`` (migration 0013, :mod:`storage.stats_rollup`); read by
# :mod:`admin.stats`. Months are local calendar months as ``yyyymm`` (``yyyy00``: the whole
# year), days local days as ``yyyymmdd``, in the zone of ``stats_rollup_state``; an absent unit,
# queue or category is ``''``. One row per period and key; the counts are columns.


def _stats_table(name: str) -> Table:
    return Table(
        name,
        Base.metadata,
        Column(PERIOD[name], Integer, primary_key=True),
        Column("unit_code", String(16), primary_key=True),
        Column("queue_key", String(64), primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("category", String(32), primary_key=True),
        *(Column(m, Integer, nullable=False) for m in MEASURES[name]),
    )


#: Reports by the month they arrived: status counts and duration histograms.
stats_received = _stats_table("stats_received")
#: Resolved reports by the month they were resolved: outcomes, subjects, assisted arrests.
stats_resolved = _stats_table("stats_resolved")
#: The same by local day (``day = yyyymmdd``), without the duration histograms.
stats_received_daily = _stats_table("stats_received_daily")
stats_resolved_daily = _stats_table("stats_resolved_daily")
#: One row (``id = 1``): the zone the rollups count in (``minutes``: its fixed offset, if any).
stats_rollup_state = Table(
    STATE_TABLE,
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("zone", String(64), nullable=False),
    Column("minutes", Integer, nullable=True),
)


class UpdateArrival(Base):
    """An update some web process has seen and not yet handled (PostgreSQL, several processes):
    a later update of the same chat waits for it (:mod:`bot.ordering`). ``chat`` is a number
    derived from the keyed sender hash, never a chat id; the row goes when the update is
    handled."""

    __tablename__ = "update_arrivals"

    chat: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    arrived_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ChatMark(Base):
    """What the delivery knows of an officers' chat (:mod:`bot.delivery.landing`): the highest
    message id the Bot API gave back for the bot's own messages there, and the outbox row whose
    send timed out and may have landed (``unsure_row_id``; its message, if any, is above
    ``unsure_after``). Officers' groups only: never a tipster's chat."""

    __tablename__ = "chat_marks"

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_message_id: Mapped[int] = mapped_column(BigInteger, default=0)
    unsure_row_id: Mapped[int | None] = mapped_column(BigInteger)
    unsure_after: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SendSlot(Base):
    """A flood budget shared by every process (:mod:`bot.delivery.shared_budget`): the moment,
    in the database's clock (epoch seconds), from which the budget ``key`` is free again."""

    __tablename__ = "send_slots"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    free_at: Mapped[float] = mapped_column(Float)
    stamped: Mapped[float] = mapped_column(Float)
