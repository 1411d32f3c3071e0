"""The retention policy on both databases: what goes, what stays, the audit trail, idempotence."""

from __future__ import annotations

import itertools
from datetime import timedelta

from sqlalchemy import func, select

from bot.housekeeping import retention_policy, run_retention
from config.settings import Settings
from handlers.retention import RetentionPolicy
from storage.models import (
    AuditEvent,
    ContactRoute,
    MediaBlob,
    RelayMessage,
    Report,
    ReportEvent,
    ReportMedia,
    Reward,
)
from storage.types import utcnow

_codes = itertools.count(1)
DAYS = timedelta(days=1)
POLICY = RetentionPolicy.from_days(route_days=180, evidence_days=365, text_years=0, audit_days=0)
SECRET_TEXT = "Người bán ma túy ở quán nước đầu hẻm số 7"


async def _report(
    session_factory, *, status: str, closed_days_ago: int | None, created_days_ago: int = 800
) -> int:
    """A report with a route, two evidence files and a tipster's photo in the relay."""
    now = utcnow()
    async with session_factory() as session, session.begin():
        report = Report(
            code=f"RET{next(_codes):07d}",
            kind="tip",
            contact_mode="relay",
            pin_hash="x",
            locale="vi",
            channel="telegram",
            status=status,
            description=SECRET_TEXT,
            place_text="đầu hẻm số 7",
            created_at=now - created_days_ago * DAYS,
        )
        session.add(report)
        await session.flush()
        blobs = [
            MediaBlob(sha256=f"{i:064d}", mime="image/jpeg", size=3, content=b"abc")
            for i in range(3)
        ]
        session.add_all(blobs)
        await session.flush()
        session.add_all(
            ReportMedia(
                report_id=report.id, position=i, kind="photo", blob_id=blobs[i].id, caption="c"
            )
            for i in range(2)
        )
        session.add(
            RelayMessage(
                report_id=report.id, direction="to_officers", text="thêm", blob_id=blobs[2].id
            )
        )
        session.add(ContactRoute(report_id=report.id, sender_key="k" * 64, route="token"))
        session.add(
            ReportEvent(
                report_id=report.id,
                at=now - created_days_ago * DAYS,
                actor_kind="citizen",
                action="submitted",
                to_status="new",
            )
        )
        if closed_days_ago is not None:
            session.add(
                ReportEvent(
                    report_id=report.id,
                    at=now - closed_days_ago * DAYS,
                    actor_kind="officer",
                    action=status,
                    from_status="in_progress",
                    to_status=status,
                )
            )
        return report.id


async def _counts(session_factory, report_id: int) -> dict[str, int]:
    async with session_factory() as session:
        routes = await session.scalar(
            select(func.count()).where(ContactRoute.report_id == report_id)
        )
        media = await session.scalar(
            select(func.count()).where(ReportMedia.report_id == report_id)
        )
        relay_files = await session.scalar(
            select(func.count()).where(
                RelayMessage.report_id == report_id, RelayMessage.blob_id.is_not(None)
            )
        )
        return {"routes": routes or 0, "media": media or 0, "relay_files": relay_files or 0}


async def test_closed_report_loses_route_and_evidence_open_one_keeps_them(session_factory):
    old_closed = await _report(session_factory, status="resolved", closed_days_ago=400)
    route_only = await _report(session_factory, status="rejected", closed_days_ago=200)
    recent = await _report(session_factory, status="resolved", closed_days_ago=10)
    still_open = await _report(session_factory, status="in_progress", closed_days_ago=None)

    result = await run_retention(session_factory, POLICY)

    assert await _counts(session_factory, old_closed) == {
        "routes": 0,
        "media": 0,
        "relay_files": 0,
    }
    # Closed 200 days ago: past the route limit (180), not the evidence limit (365).
    assert await _counts(session_factory, route_only) == {
        "routes": 0,
        "media": 2,
        "relay_files": 1,
    }
    for kept in (recent, still_open):
        assert await _counts(session_factory, kept) == {"routes": 1, "media": 2, "relay_files": 1}
    assert (result.routes, result.evidence_files, result.blobs, result.texts) == (2, 3, 3, 0)

    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(MediaBlob)) == 9
        audits = (await session.scalars(select(AuditEvent))).all()
        assert len(audits) == 1
        assert audits[0].action == "retention"
        assert audits[0].data == {
            "routes": 2,
            "evidence_files": 3,
            "blobs": 3,
            "texts": 0,
            "audit_events": 0,
            "outbox": 0,
            "outbox_failed": 0,
            "reports": 2,
        }
        # The report's own history says what went, in counts; free text is untouched.
        event = await session.scalar(
            select(ReportEvent).where(
                ReportEvent.report_id == old_closed, ReportEvent.action == "retention"
            )
        )
        assert event is not None and event.data == {"route": 1, "evidence": 3}
        report = await session.get(Report, old_closed)
        assert report is not None and report.description == SECRET_TEXT
        # Never content in the audit trail.
        for row in (*audits, event):
            assert SECRET_TEXT not in str(row.data) and "token" not in str(row.data)

    again = await run_retention(session_factory, POLICY)
    assert again.total == 0
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(AuditEvent)) == 1
        assert (
            await session.scalar(select(func.count()).where(ReportEvent.action == "retention"))
            == 2
        )


async def test_a_waiting_reward_keeps_the_route(session_factory):
    report_id = await _report(session_factory, status="resolved", closed_days_ago=400)
    async with session_factory() as session, session.begin():
        session.add(Reward(report_id=report_id, amount_vnd=500_000, reason="r", status="approved"))
    await run_retention(session_factory, POLICY)
    counts = await _counts(session_factory, report_id)
    assert counts == {"routes": 1, "media": 0, "relay_files": 0}


async def test_free_text_is_redacted_after_the_years_given_and_batches_add_up(session_factory):
    ids = [
        await _report(session_factory, status="resolved", closed_days_ago=3 * 365)
        for _ in range(3)
    ]
    recent = await _report(session_factory, status="resolved", closed_days_ago=300)
    policy = RetentionPolicy.from_days(route_days=0, evidence_days=0, text_years=2, audit_days=0)
    result = await run_retention(session_factory, policy, batch=2)
    assert (result.texts, result.routes, result.evidence_files) == (3, 0, 0)
    async with session_factory() as session:
        for report_id in ids:
            report = await session.get(Report, report_id)
            assert report is not None
            assert (report.description, report.place_text) == (None, None)
        relay_texts = (
            await session.scalars(select(RelayMessage.text).where(RelayMessage.report_id.in_(ids)))
        ).all()
        assert relay_texts == [None, None, None]
        kept = await session.get(Report, recent)
        assert kept is not None and kept.description == SECRET_TEXT
        # Two batches (2 + 1), an audit event each.
        assert await session.scalar(select(func.count()).select_from(AuditEvent)) == 2
    assert (await run_retention(session_factory, policy)).total == 0


async def test_old_audit_events_go_when_a_limit_is_set(session_factory):
    async with session_factory() as session, session.begin():
        session.add(AuditEvent(at=utcnow() - 40 * DAYS, via="web", action="signed_in"))
        session.add(AuditEvent(at=utcnow() - 5 * DAYS, via="web", action="signed_in"))
    policy = RetentionPolicy.from_days(route_days=0, evidence_days=0, text_years=0, audit_days=30)
    result = await run_retention(session_factory, policy)
    assert result.audit_events == 1
    async with session_factory() as session:
        actions = sorted((await session.scalars(select(AuditEvent.action))).all())
        assert actions == ["retention", "signed_in"]


def test_settings_defaults_are_the_documented_policy():
    policy = retention_policy(Settings(_env_file=None))
    assert policy.route_after_close == timedelta(days=180)
    assert policy.evidence_after_close == timedelta(days=365)
    assert policy.text_after_close is None
    assert policy.audit_events is None
    assert policy.outbox == timedelta(days=30)
    assert policy.outbox_failed == timedelta(days=90)
