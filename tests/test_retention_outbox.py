"""Pruning the delivery outbox in the retention run, on both databases: settled rows go after
their limit, failed rows after theirs, nothing waiting or being sent is ever touched, a backlog
larger than a batch is cleared, the counts add up, and a card is still edited (and a relayed
question still answered by a reply) after the rows that delivered them are gone."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.housekeeping import retention_policy, run_retention
from config.settings import Settings
from handlers.citizen.relay import SENT_MESSAGE_ID
from handlers.i18n import t
from handlers.outbox import Status
from handlers.retention import SETTLED, RetentionPolicy
from storage.models import (
    AuditEvent,
    CardPost,
    ChatMark,
    ContactRoute,
    OutboxMessage,
    Report,
    ReportEvent,
)
from storage.types import utcnow
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory
from tests.test_triage_e2e import LX, Group_, button, card_in_group, until

DAYS = timedelta(days=1)
POLICY = RetentionPolicy.from_days(
    route_days=0,
    evidence_days=0,
    text_years=0,
    audit_days=0,
    outbox_days=30,
    outbox_failed_days=90,
)
_codes = itertools.count(1)
_keys = itertools.count(1)


async def _report(session_factory, *, route: bool) -> int:
    async with session_factory() as session, session.begin():
        report = Report(
            code=f"OBX{next(_codes):07d}",
            kind="tip",
            contact_mode="relay" if route else "none",
            pin_hash="x",
            locale="vi",
            channel="telegram",
            status="in_progress",
        )
        session.add(report)
        await session.flush()
        if route:
            session.add(ContactRoute(report_id=report.id, sender_key="k" * 64, route="token"))
        return report.id


async def _row(
    session_factory,
    status: str,
    *,
    due_days_ago: float,
    sent_days_ago: float | None = None,
    kind: str = "report_card",
    report_id: int | None = None,
    payload: dict[str, Any] | None = None,
    claimed: bool = False,
) -> int:
    """An outbox row last due ``due_days_ago`` (created then too), sent ``sent_days_ago``."""
    now = utcnow()
    due = now - due_days_ago * DAYS
    async with session_factory() as session, session.begin():
        row = OutboxMessage(
            kind=kind,
            destination="unit:30307" if report_id is None else f"report:{report_id}",
            payload=payload or {},
            status=status,
            report_id=report_id,
            next_attempt_at=due,
            created_at=due,
            sent_at=None if sent_days_ago is None else now - sent_days_ago * DAYS,
            dedupe_key=f"test:{next(_keys)}",
            chat_key="-1001" if status == Status.SENT else None,
            message_count=1 if status == Status.SENT else 0,
            claimed_until=now + timedelta(minutes=1) if claimed else None,
        )
        session.add(row)
        await session.flush()
        return row.id


async def _ids(session_factory) -> set[int]:
    async with session_factory() as session:
        return set((await session.scalars(select(OutboxMessage.id))).all())


async def test_settled_rows_go_after_their_limit_and_waiting_rows_never(session_factory):
    questioned = await _report(session_factory, route=True)
    routeless = await _report(session_factory, route=False)
    async with session_factory() as session, session.begin():
        session.add(CardPost(report_id=questioned, chat_id=-1001, message_id=7))
        session.add(ChatMark(chat_id=-1001, last_message_id=7, unsure_row_id=None))
    gone = {
        await _row(session_factory, "sent", due_days_ago=40, sent_days_ago=40),
        await _row(session_factory, "folded", due_days_ago=45),
        await _row(session_factory, "done", due_days_ago=31, sent_days_ago=31, kind="timer.x"),
        # A timer cancelled before it came due: counted from when it would have been.
        await _row(session_factory, "cancelled", due_days_ago=35, kind="timer.x"),
        # A notice to the tipster (no question in it), and a question whose route is gone.
        await _row(
            session_factory,
            "sent",
            due_days_ago=40,
            sent_days_ago=40,
            kind="citizen_message",
            report_id=questioned,
            payload={"key": "notify.assigned"},
        ),
        await _row(
            session_factory,
            "sent",
            due_days_ago=40,
            sent_days_ago=40,
            kind="citizen_message",
            report_id=routeless,
            payload={"relay_id": 1, SENT_MESSAGE_ID: 55},
        ),
    }
    failed_gone = await _row(session_factory, "failed", due_days_ago=100)
    kept = {
        await _row(session_factory, "sent", due_days_ago=5, sent_days_ago=5),
        await _row(session_factory, "folded", due_days_ago=29),
        # Due long ago, sent only lately (the worker was down): the sending counts.
        await _row(session_factory, "sent", due_days_ago=40, sent_days_ago=10),
        # Given up on 40 days ago: kept for the operator (90 days).
        await _row(session_factory, "failed", due_days_ago=40),
        # Waiting, parked or held for months, or being sent: never deleted.
        await _row(session_factory, "pending", due_days_ago=200),
        await _row(session_factory, "pending", due_days_ago=-1),
        await _row(session_factory, "sending", due_days_ago=200, claimed=True),
        await _row(session_factory, "sending", due_days_ago=200),  # a lapsed lease
        # A question the tipster may still answer by replying to it: kept while the route is.
        await _row(
            session_factory,
            "sent",
            due_days_ago=400,
            sent_days_ago=400,
            kind="citizen_message",
            report_id=questioned,
            payload={"relay_id": 2, SENT_MESSAGE_ID: 56},
        ),
    }
    async with session_factory() as session:
        reports_before = await session.scalar(select(func.count()).select_from(Report))
        events_before = await session.scalar(select(func.count()).select_from(ReportEvent))

    result = await run_retention(session_factory, POLICY)

    assert await _ids(session_factory) == kept
    assert (result.outbox, result.outbox_failed) == (len(gone), 1)
    assert (result.routes, result.evidence_files, result.texts, result.audit_events) == (0,) * 4
    assert failed_gone not in kept
    async with session_factory() as session:
        [audit] = (await session.scalars(select(AuditEvent))).all()
        assert audit.action == "retention"
        assert audit.data == {
            "routes": 0,
            "evidence_files": 0,
            "blobs": 0,
            "texts": 0,
            "audit_events": 0,
            "outbox": len(gone),
            "outbox_failed": 1,
            "reports": 0,
        }
        # Nothing else is touched: reports, their history, routes, cards, chat marks.
        assert await session.scalar(select(func.count()).select_from(Report)) == reports_before
        assert await session.scalar(select(func.count()).select_from(ReportEvent)) == events_before
        assert await session.scalar(select(func.count()).select_from(ContactRoute)) == 1
        assert await session.scalar(select(func.count()).select_from(CardPost)) == 1
        assert await session.scalar(select(ChatMark.last_message_id)) == 7

    again = await run_retention(session_factory, POLICY)
    assert again.total == 0
    assert await _ids(session_factory) == kept


async def test_a_backlog_larger_than_a_batch_is_cleared_and_counted(session_factory):
    old = [
        await _row(session_factory, status, due_days_ago=60 + i, sent_days_ago=60 + i)
        for i, status in enumerate(["sent"] * 9 + ["done"] * 2)
    ]
    old += [await _row(session_factory, "failed", due_days_ago=120 + i) for i in range(5)]
    waiting = {
        await _row(session_factory, "pending", due_days_ago=300),
        await _row(session_factory, "sending", due_days_ago=300, claimed=True),
        await _row(session_factory, "sent", due_days_ago=1, sent_days_ago=1),
    }
    result = await run_retention(session_factory, POLICY, outbox_batch=4)
    assert (result.outbox, result.outbox_failed) == (11, 5)
    assert await _ids(session_factory) == waiting
    async with session_factory() as session:
        audits = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    # Batches of at most 4 of each: 4+4+3 settled alongside 4+1 failed, an audit event each.
    assert [(a.data["outbox"], a.data["outbox_failed"]) for a in audits] == [
        (4, 4),
        (4, 1),
        (3, 0),
    ]


async def test_kept_when_the_setting_is_zero_and_the_settings_defaults(session_factory):
    await _row(session_factory, "sent", due_days_ago=4000, sent_days_ago=4000)
    await _row(session_factory, "failed", due_days_ago=4000)
    keep_all = RetentionPolicy.from_days(
        route_days=180, evidence_days=365, text_years=0, audit_days=0
    )
    assert (await run_retention(session_factory, keep_all)).total == 0
    assert len(await _ids(session_factory)) == 2

    policy = retention_policy(Settings(_env_file=None))
    assert (policy.outbox, policy.outbox_failed) == (30 * DAYS, 90 * DAYS)
    result = await run_retention(session_factory, policy)
    assert (result.outbox, result.outbox_failed) == (1, 1)


def test_the_settings_refuse_a_limit_shorter_than_a_week():
    with pytest.raises(ValueError, match=r"OUTBOX_DAYS=3: 0 \(kept\) or at least 7 days"):
        Settings(_env_file=None, retention_outbox_days=3)
    with pytest.raises(ValueError, match="TINBAO_RETENTION_OUTBOX_FAILED_DAYS"):
        Settings(_env_file=None, retention_outbox_failed_days=1)
    assert Settings(_env_file=None, retention_outbox_days=0).retention_outbox_days == 0
    assert SETTLED == ("sent", "folded", "done", "cancelled")


# ------------------------------------------------------------------------- end to end


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path: Path):
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        'units = ["30307", "30292"]\n',
        encoding="utf-8",
    )
    settings = service_settings(
        standin,
        db_url,
        tmp_path,
        queues_file=queues,
        duty_chat_id=-1009999999999,
        admin_telegram_ids=[880202],
    )
    async with running_service(settings) as running:
        yield running


async def _age_and_prune(service) -> tuple[int, int]:
    """Every settled row as if it had been sent 40 days ago, then the retention run (the
    settings' policy); returns (rows deleted, aged rows left). A row that settles meanwhile
    (the service keeps delivering) is young and not counted."""
    then: datetime = utcnow() - 40 * DAYS
    async with service.session_factory() as session, session.begin():
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.status.in_(SETTLED))
            .values(next_attempt_at=then, created_at=then)
        )
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.status.in_(SETTLED), OutboxMessage.sent_at.is_not(None))
            .values(sent_at=then)
        )
    result = await run_retention(service.session_factory, retention_policy(service.settings))
    async with service.session_factory() as session:
        left = await session.scalar(
            select(func.count()).where(
                OutboxMessage.status.in_(SETTLED), OutboxMessage.created_at <= then
            )
        )
    return result.outbox, int(left or 0)


async def test_a_card_is_edited_and_a_question_answered_after_their_rows_are_pruned(
    standin, service
):
    factory = UpdateFactory(standin)
    tipster = factory.new_user(first_name="Ẩn Danh", user_id=880201)
    officer = factory.new_user(first_name="Cán bộ", user_id=880202)
    group = Group_(standin, factory, service)
    chat = Chat(standin, factory, service, tipster)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.drugs"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    await chat.say("Mua bán ma túy ở quán nước đầu hẻm 5")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.relay", mark="✓ "))
    await chat.press(t("vi", "summary.confirm"))
    card = await card_in_group(standin)

    async def posted() -> bool:
        async with service.session_factory() as session:
            return await session.scalar(select(CardPost)) is not None

    await until(posted)
    pruned, left = await _age_and_prune(service)
    assert pruned >= 1 and left == 0  # the card's row among them
    async with service.session_factory() as session:
        assert (
            await session.scalar(select(func.count()).where(OutboxMessage.kind == "report_card"))
            == 0
        )

    # The card is still the report's: a press edits that very message.
    start = len(standin.calls)
    assert await group.press(officer, card, button(card, "r:claim:")) == t("vi", "triage.claimed")
    edited = await standin.wait_for(
        lambda c: (
            c.method == "editMessageText"
            and c.chat_id == LX.id
            and c.params.get("message_id") == card["message_id"]
        ),
        timeout=10,
        start=start,
    )
    assert edited.ok

    # A question to the tipster; every settled row is pruned again, except that question.
    await group.press(officer, card, button(card, "r:ask:"))
    prompt = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "force_reply" in str(c.params.get("reply_markup")),
        timeout=10,
    )
    await group.reply(officer, "Quán tên gì?", prompt.result)
    question = await standin.wait_for(
        lambda c: c.chat_id == tipster.id and "Quán tên gì" in (c.text or ""), timeout=10
    )

    async def delivered() -> bool:
        async with service.session_factory() as session:
            rows = await session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == "citizen_message")
            )
            return any(SENT_MESSAGE_ID in (r.payload or {}) for r in rows)

    await until(delivered)
    pruned, left = await _age_and_prune(service)
    assert pruned >= 1 and left == 1

    # The tipster answers by replying to the question: relayed under the card.
    await chat.send(factory.text(tipster, "Quán Cô Ba, mở từ 6 giờ", reply_to=question.result))
    relayed = await standin.wait_for(
        lambda c: c.chat_id == LX.id and "Quán Cô Ba" in (c.text or ""), timeout=10
    )
    assert relayed.params["reply_parameters"]["message_id"] == card["message_id"]
