"""Authorization findings of the security probe (issue 12), one test each, on SQLite and
PostgreSQL: enrolment sets scopes, revocation clears them, "duplicate of" confirms nothing, and a
commander is limited to their scopes unless they hold ``*``."""

from __future__ import annotations

import hashlib
import itertools

from sqlalchemy import select

from handlers.i18n import t
from handlers.officers import Registry
from storage.models import AuditEvent, CardPost, ContactRoute, MediaBlob, ReportEvent, ReportMedia
from tests.test_admin import Env, env  # noqa: F401 - the panel fixture
from tests.test_triage import (  # noqa: F401 - the chat fixture
    ADMIN,
    CD_CHAT,
    OFFICER,
    denied,
    world,
)

BOSS = 7_777
_cards = itertools.count(90_000)


# --------------------------------------------------------------------------- scopes


async def test_re_enrolment_sets_the_scopes_instead_of_adding(world):  # noqa: F811
    async with world.session_factory() as session, session.begin():
        await Registry(session).enrol(
            telegram_user_id=BOSS, display_name="Chỉ huy", role="commander", queue_key="*", by=None
        )
    # An admin re-enrols the commander of every queue as an officer of queue lx, in lx's chat.
    await world.say(
        ADMIN, "/enrol", command="enrol", args=f"officer {BOSS} Chỉ huy", reply_to_bot=False
    )
    async with world.session_factory() as session:
        officer = await Registry(session).by_telegram(BOSS)
        assert officer is not None and officer.role == "officer"
        assert [s.queue_key for s in officer.scopes] == ["lx"]
        event = await session.scalar(
            select(AuditEvent)
            .where(AuditEvent.action == "enrolled", AuditEvent.subject_id == officer.id)
            .order_by(AuditEvent.id.desc())
        )
        assert event is not None and event.data is not None
        assert (event.data["old_scopes"], event.data["new_scopes"]) == (["*"], ["lx"])
    # So a card of queue cd, in cd's chat, is no longer theirs to claim.
    report, _ = await world.tip(7101)
    async with world.session_factory() as session, session.begin():
        moved = await session.get(type(report), report.id)
        assert moved is not None
        moved.queue_key = "cd"
        card = next(_cards)
        session.add(CardPost(report_id=report.id, chat_id=CD_CHAT, message_id=card))
    assert denied(await world.press(BOSS, f"r:claim:{report.id}", card, chat_id=CD_CHAT))
    assert (await world.report(report.id)).status == "new"


async def test_revocation_clears_the_scopes_and_audits_them(world):  # noqa: F811
    async with world.session_factory() as session, session.begin():
        await Registry(session).enrol(
            telegram_user_id=BOSS, display_name="Chỉ huy", role="commander", queue_key="*", by=None
        )
    await world.say(ADMIN, "/revoke", command="revoke", args=str(BOSS), reply_to_bot=False)
    async with world.session_factory() as session:
        officer = await Registry(session).by_telegram(BOSS)
        assert officer is not None and not officer.active and officer.scopes == []
        event = await session.scalar(
            select(AuditEvent).where(
                AuditEvent.action == "revoked", AuditEvent.subject_id == officer.id
            )
        )
        assert event is not None and event.data is not None
        assert (event.data["old_scopes"], event.data["new_scopes"]) == (["*"], [])
    # Re-enrolled later, they serve only what the new enrolment gives.
    await world.say(
        ADMIN, "/enrol", command="enrol", args=f"officer {BOSS} Chỉ huy", reply_to_bot=False
    )
    async with world.session_factory() as session:
        officer = await Registry(session).by_telegram(BOSS)
        assert officer is not None and [s.queue_key for s in officer.scopes] == ["lx"]


# --------------------------------------------------------------------------- duplicate of


async def test_duplicate_of_another_queues_code_is_answered_as_unknown_in_the_chat(
    world,  # noqa: F811
):
    other, _ = await world.tip(7102)
    mine, card = await world.tip(7103)
    async with world.session_factory() as session, session.begin():
        moved = await session.get(type(other), other.id)
        assert moved is not None
        moved.queue_key = "cd"  # a report the officer of lx may not see
    await world.press(OFFICER, f"r:dup:{mine.id}", card)
    await world.say(OFFICER, "ZZZZZZZZZZ")  # no such code
    unknown = (await world.outbox("chat_text"))[-1].payload["text"]
    await world.say(OFFICER, other.code)
    hidden = (await world.outbox("chat_text"))[-1].payload["text"]
    assert hidden == unknown == t("vi", "triage.prompt.duplicate_again")
    assert (await world.report(mine.id)).status == "new"


async def test_duplicate_of_another_queues_code_is_answered_as_unknown_in_the_panel(
    env: Env,  # noqa: F811
) -> None:
    await env.add_officer("lan", "officer", "qa")
    mine = await env.add_report(env.unit_a)
    other = await env.add_report(env.unit_b)
    assert await env.login("lan") == 303
    path = f"/admin/reports/{mine.code}/resolve"
    unknown = await env.post(path, {"outcome": "duplicate", "duplicate_of": "ZZZZZZZZZZ"})
    hidden = await env.post(path, {"outcome": "duplicate", "duplicate_of": other.code})
    assert hidden == unknown == 409
    assert (await env.report(mine.id)).status == "new"


# --------------------------------------------------------------------------- commanders


async def test_a_commander_is_limited_to_their_scopes_in_the_panel(
    env: Env,  # noqa: F811
) -> None:
    await env.add_officer("boss", "commander", "qa")
    await env.add_officer("chief", "commander", "*")
    mine = await env.add_report(env.unit_a, description="report of queue A")
    other = await env.add_report(env.unit_b, contact_mode="phone", description="report of B")
    keyring = env.service.keyring
    assert keyring is not None
    async with env.service.session_factory() as db, db.begin():
        route = await db.scalar(select(ContactRoute).where(ContactRoute.report_id == other.id))
        assert route is not None
        route.phone = keyring.encrypt({"phone": "+84912345678"})
        content = b"\x89PNG not really"
        blob = MediaBlob(
            sha256=hashlib.sha256(content).hexdigest(),
            mime="image/png",
            size=len(content),
            content=content,
        )
        db.add(blob)
        await db.flush()
        item = ReportMedia(report_id=other.id, position=1, kind="photo", blob_id=blob.id)
        db.add(item)
        db.add(
            ReportEvent(
                report_id=other.id, action="note", actor_kind="system", reason="marker-of-b"
            )
        )
        await db.flush()
        media_id = item.id

    assert await env.login("boss") == 303
    assert (await env.client.get(f"/admin/reports/{mine.code}")).status == 200
    detail = await env.client.get(f"/admin/reports/{other.code}")
    assert detail.status == 404
    assert "+84912345678" not in await detail.text()
    assert (await env.client.get(f"/admin/media/{media_id}")).status == 404
    listing = await (await env.client.get("/admin/reports")).text()
    assert mine.code in listing and other.code not in listing
    stats = await (await env.client.get("/admin/stats/export.csv")).text()
    audit = await (await env.client.get("/admin/audit")).text()
    assert "marker-of-b" not in audit and other.code not in audit

    # A commander holding `*` sees every queue, the phone and the media.
    assert await env.login("chief") == 303
    detail = await env.client.get(f"/admin/reports/{other.code}")
    assert detail.status == 200 and "+84912345678" in await detail.text()
    assert (await env.client.get(f"/admin/media/{media_id}")).status == 200
    every = await (await env.client.get("/admin/stats/export.csv")).text()
    assert "marker-of-b" in await (await env.client.get("/admin/audit")).text()
    assert _total(stats) == 1 and _total(every) == 2


def _total(csv_text: str) -> int:
    """The report total in a statistics export (its ``total`` row)."""
    for line in csv_text.splitlines():
        cells = line.split(",")
        if cells[0] == "total":
            return int(cells[-1])
    raise AssertionError(f"no total row in {csv_text[:300]!r}")
