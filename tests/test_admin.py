"""The web panel through aiohttp's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openpyxl import load_workbook
from sqlalchemy import select

from admin.auth import hash_password
from admin.web import build_web_app
from bot.runtime import Service
from config.catalogue import load_catalogue
from config.settings import Settings
from handlers.localtime import local_zone
from handlers.security import new_tracking_code
from storage.models import (
    AuditEvent,
    ContactRoute,
    Officer,
    OfficerScope,
    OutboxMessage,
    RateHit,
    Report,
    ReportEvent,
    Reward,
)
from tests.e2e import TEST_SECRET_KEY

PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Env:
    service: Service
    client: TestClient
    unit_a: str
    unit_b: str

    async def add_officer(
        self, username: str, role: str, queue: str = "*", *, name: str | None = None
    ) -> int:
        async with self.service.session_factory() as db, db.begin():
            officer = Officer(
                display_name=name or username,
                role=role,
                username=username,
                password_hash=hash_password(PASSWORD),
                scopes=[OfficerScope(queue_key=queue)],
            )
            db.add(officer)
            await db.flush()
            return officer.id

    async def add_report(
        self,
        unit: str | None,
        *,
        category: str | None = "theft",
        kind: str = "tip",
        status: str = "new",
        description: str = "Trộm xe máy trước chợ",
        created_at: datetime | None = None,
        contact_mode: str = "none",
        **extra: object,
    ) -> Report:
        async with self.service.session_factory() as db, db.begin():
            report = Report(
                code=new_tracking_code(),
                kind=kind,
                category=category if kind == "tip" else None,
                unit_code=unit,
                description=description,
                contact_mode=contact_mode,
                pin_hash="x",
                locale="vi",
                channel="telegram",
                status=status,
                created_at=created_at or datetime.now(UTC),
                **extra,
            )
            db.add(report)
            await db.flush()
            if contact_mode != "none":
                db.add(ContactRoute(report_id=report.id, sender_key="k" * 64, route="x"))
            return report

    async def login(self, username: str, password: str = PASSWORD) -> int:
        self.client.session.cookie_jar.clear()
        page = await self.client.get("/admin/login")
        csrf = CSRF_RE.search(await page.text())
        assert csrf is not None
        response = await self.client.post(
            "/admin/login",
            data={"username": username, "password": password, "csrf": csrf[1]},
            allow_redirects=False,
        )
        return response.status

    async def csrf(self, path: str = "/admin/") -> str:
        page = await self.client.get(path)
        match = CSRF_RE.search(await page.text())
        assert match is not None, await page.text()
        return match[1]

    async def post(self, path: str, data: dict[str, str], *, csrf: str | None = None) -> int:
        token = csrf if csrf is not None else await self.csrf()
        response = await self.client.post(
            path, data={**data, "csrf": token}, allow_redirects=False
        )
        return response.status

    async def report(self, report_id: int) -> Report:
        async with self.service.session_factory() as db:
            report = await db.get(Report, report_id)
            assert report is not None
            return report

    async def events(self, report_id: int) -> list[ReportEvent]:
        async with self.service.session_factory() as db:
            rows = await db.scalars(
                select(ReportEvent)
                .where(ReportEvent.report_id == report_id)
                .order_by(ReportEvent.id)
            )
            return list(rows.all())


@pytest.fixture
async def env(
    db_url: str, engine: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Env]:
    monkeypatch.setenv("TINBAO_BOT_USERNAME", "tinbao_test_bot")
    monkeypatch.setenv("TINBAO_ADMIN_PAGE_SIZE", "5")
    monkeypatch.setenv("TINBAO_ADMIN_LOGIN_ATTEMPTS_PER_ACCOUNT", "3")
    monkeypatch.setenv("TINBAO_ADMIN_LOGIN_ATTEMPTS_PER_ADDRESS", "6")
    units = [u.code for u in load_catalogue().units]
    unit_a, unit_b = units[0], units[1]
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "qa"\nname = "Queue A"\nchat_id = -1001\nunits = ["{unit_a}"]\n'
        f'[[queue]]\nkey = "qb"\nname = "Queue B"\nchat_id = -1002\nunits = ["{unit_b}"]\n',
        encoding="utf-8",
    )
    settings = Settings(
        database_url=db_url,
        secret_key=TEST_SECRET_KEY,
        data_dir=tmp_path,
        queues_file=queues,
        duty_chat_id=-1009,
    )
    service = await Service.create(settings)
    client = TestClient(TestServer(build_web_app(service)))
    await client.start_server()
    try:
        yield Env(service, client, unit_a, unit_b)
    finally:
        await client.close()
        await service.stop()


# --------------------------------------------------------------------------- security


async def test_pages_need_a_session(env: Env) -> None:
    for path in ("/admin/", "/admin/reports", "/admin/stats", "/admin/stats/export.csv"):
        response = await env.client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"].startswith("/admin/login")
    assert (await env.client.get("/healthz")).status == 200


async def test_headers_and_cookie_flags(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    response = await env.client.get("/admin/")
    assert response.status == 200
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http in the test; https sets it
    assert "<script>" not in await response.text()  # no inline script at all


async def test_wrong_password_and_unknown_user(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief", "wrong password!!") == 401
    assert await env.login("nobody") == 401
    assert await env.login("chief") == 303


async def test_login_is_throttled_per_account(env: Env) -> None:
    await env.add_officer("chief", "admin")
    for _ in range(3):
        assert await env.login("chief", "not the password") == 401
    assert await env.login("chief") == 429  # even the right password, for a while
    async with env.service.session_factory() as db:
        keys = (await db.scalars(select(RateHit.key))).all()
    assert keys and all("chief" not in k for k in keys)  # hashed with the keyring


async def test_login_is_throttled_per_address(env: Env) -> None:
    await env.add_officer("chief", "admin")
    for i in range(6):
        assert await env.login(f"guess{i}", "not the password") == 401
    assert await env.login("chief") == 429


async def test_post_without_or_with_a_wrong_csrf_token_is_refused(env: Env) -> None:
    await env.add_officer("chief", "admin")
    report = await env.add_report(env.unit_a)
    assert await env.login("chief") == 303
    path = f"/admin/reports/{report.code}/claim"
    response = await env.client.post(path, data={}, allow_redirects=False)
    assert response.status == 403
    assert await env.post(path, {}, csrf="forged-token") == 403
    assert (await env.report(report.id)).status == "new"
    # The login form is protected too.
    env.client.session.cookie_jar.clear()
    response = await env.client.post(
        "/admin/login", data={"username": "chief", "password": PASSWORD}, allow_redirects=False
    )
    assert response.status == 403
    assert await env.post(path, {}) == 303  # the real token works (after signing in again)


async def test_a_revoked_officer_loses_the_session(env: Env) -> None:
    officer_id = await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    assert (await env.client.get("/admin/", allow_redirects=False)).status == 200
    async with env.service.session_factory() as db, db.begin():
        officer = await db.get(Officer, officer_id)
        assert officer is not None
        officer.active = False
    assert (await env.client.get("/admin/", allow_redirects=False)).status == 303


async def test_logout_ends_the_session(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    assert await env.post("/admin/logout", {}) == 303
    assert (await env.client.get("/admin/", allow_redirects=False)).status == 303


async def test_tip_text_is_escaped(env: Env) -> None:
    await env.add_officer("chief", "admin")
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    report = await env.add_report(env.unit_a, description=payload, place_text=payload)
    assert await env.login("chief") == 303
    body = await (await env.client.get(f"/admin/reports/{report.code}")).text()
    assert "<script>alert" not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body


async def test_a_phone_the_tipster_chose_to_leave_is_shown(env: Env) -> None:
    await env.add_officer("chief", "admin")
    report = await env.add_report(env.unit_a, contact_mode="phone")
    keyring = env.service.keyring
    assert keyring is not None
    async with env.service.session_factory() as db, db.begin():
        route = await db.scalar(select(ContactRoute).where(ContactRoute.report_id == report.id))
        assert route is not None
        route.phone = keyring.encrypt({"phone": "+84912345678"})
    assert await env.login("chief") == 303
    body = await (await env.client.get(f"/admin/reports/{report.code}")).text()
    assert 'href="tel:+84912345678"' in body


async def test_language_switch(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    assert "Tổng quan" in await (await env.client.get("/admin/")).text()
    response = await env.client.get("/admin/lang?l=en&next=/admin/reports")
    assert response.url.path == "/admin/reports"
    assert "Reports" in await response.text()
    evil = await env.client.get("/admin/lang?l=en&next=//evil.example", allow_redirects=False)
    assert evil.headers["Location"] == "/admin/"


# --------------------------------------------------------------------------- roles


async def test_every_page_renders_for_an_admin(env: Env) -> None:
    await env.add_officer("chief", "admin")
    report = await env.add_report(env.unit_a)
    await env.add_report(None, kind="emergency", status="new")
    assert await env.login("chief") == 303
    year = datetime.now(local_zone()).year
    for path in (
        "/admin/",
        "/admin/reports",
        "/admin/reports?status=new&emergency=1",
        f"/admin/reports/{report.code}",
        "/admin/rewards",
        "/admin/stats",
        f"/admin/stats?period={year}",
        "/admin/stats/chart/category.svg",
        "/admin/stats/chart/unit.svg",
        "/admin/stats/chart/status.svg",
        "/admin/officers",
        "/admin/units",
        f"/admin/units/{env.unit_a}/poster",
        f"/admin/units/{env.unit_a}/qr.svg",
        "/admin/audit",
        "/admin/audit?kind=citizen",
    ):
        response = await env.client.get(path)
        assert response.status == 200, path
    poster = await (await env.client.get(f"/admin/units/{env.unit_a}/poster")).text()
    assert f"https://t.me/tinbao_test_bot?start=u_{env.unit_a}" in poster
    qr = await (await env.client.get(f"/admin/units/{env.unit_a}/qr.svg")).text()
    assert "<svg" in qr and "<script" not in qr


async def test_an_officer_sees_only_their_queue(env: Env) -> None:
    await env.add_officer("lan", "officer", "qa")
    mine = await env.add_report(env.unit_a, description="report in A")
    other = await env.add_report(env.unit_b, description="report in B")
    transferred = await env.add_report(env.unit_b, description="moved to A", queue_key="qa")
    assert await env.login("lan") == 303
    listing = await (await env.client.get("/admin/reports")).text()
    assert mine.code in listing and transferred.code in listing
    assert other.code not in listing
    assert (await env.client.get(f"/admin/reports/{other.code}")).status == 404
    assert await env.post(f"/admin/reports/{other.code}/claim", {}) == 404
    assert (await env.report(other.id)).status == "new"
    for path in ("/admin/stats", "/admin/stats/export.xlsx", "/admin/audit", "/admin/officers"):
        assert (await env.client.get(path)).status == 403, path
    assert await env.post(f"/admin/reports/{mine.code}/claim", {}) == 303
    assert (await env.report(mine.id)).status == "assigned"


async def test_a_commander_sees_their_queues_but_only_admins_enrol(env: Env) -> None:
    await env.add_officer("boss", "commander", "qa")
    mine = await env.add_report(env.unit_a)
    other = await env.add_report(env.unit_b)
    assert await env.login("boss") == 303
    assert (await env.client.get(f"/admin/reports/{mine.code}")).status == 200
    # A commander is limited to their scopes (tests/test_authorization.py has the details).
    assert (await env.client.get(f"/admin/reports/{other.code}")).status == 404
    assert (await env.client.get("/admin/stats")).status == 200
    assert await env.post(f"/admin/reports/{other.code}/claim", {}) == 404
    form = {"telegram_user_id": "555", "name": "Bình", "role": "officer", "queue": "qa"}
    assert await env.post("/admin/officers/enrol", form) == 403


async def test_admin_enrols_and_revokes_through_the_registry(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    form = {"telegram_user_id": "555", "name": "Nguyễn Bình", "role": "officer", "queue": "qa"}
    assert await env.post("/admin/officers/enrol", form) == 303
    async with env.service.session_factory() as db:
        enrolled = await db.scalar(select(Officer).where(Officer.telegram_user_id == 555))
        assert enrolled is not None and enrolled.active
        assert [s.queue_key for s in enrolled.scopes] == ["qa"]
        enrolled_id = enrolled.id
    assert await env.post(f"/admin/officers/{enrolled_id}/revoke", {}) == 303
    async with env.service.session_factory() as db:
        revoked = await db.get(Officer, enrolled_id)
        assert revoked is not None and not revoked.active
        chief = await db.scalar(select(Officer).where(Officer.username == "chief"))
        events = (await db.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    assert chief is not None
    # Sign-in, enrolment and revocation are audit events: who, when, on whom, through what.
    assert [(e.action, e.via, e.subject_id) for e in events] == [
        ("signed_in", "web", chief.id),
        ("enrolled", "web", enrolled_id),
        ("revoked", "web", enrolled_id),
    ]
    assert all(e.actor_id == chief.id for e in events)
    page = await env.client.get("/admin/audit")
    assert page.status == 200
    assert "Nguyễn Bình" in await page.text()


# --------------------------------------------------------------------------- actions


async def test_actions_write_the_same_audit_events_as_the_chat(env: Env) -> None:
    officer_id = await env.add_officer("lan", "officer", "qa")
    report = await env.add_report(env.unit_a, contact_mode="relay")
    original = await env.add_report(env.unit_a)
    assert await env.login("lan") == 303
    base = f"/admin/reports/{report.code}"
    assert await env.post(f"{base}/claim", {}) == 303
    assert await env.post(f"{base}/ask", {"question": "Xe màu gì?"}) == 303
    assert (await env.report(report.id)).status == "needs_info"
    assert await env.post(f"{base}/transfer", {"queue": "qb"}) == 303
    updated = await env.report(report.id)
    assert updated.queue_key == "qb" and updated.status == "new"
    # Now outside the officer's queue: no longer visible.
    assert (await env.client.get(base)).status == 404
    other = f"/admin/reports/{original.code}"
    assert await env.post(f"{other}/reject", {"reason": "x"}) == 409
    assert await env.post(f"{other}/resolve", {"outcome": "clarified", "subjects": "abc"}) == 409
    form = {"outcome": "clarified", "subjects": "3", "arrest": "1"}
    assert await env.post(f"{other}/resolve", form) == 303
    resolved = await env.report(original.id)
    assert resolved.status == "resolved" and resolved.subjects_handled == 3
    assert resolved.citizen_assisted_arrest is True
    events = await env.events(report.id)
    assert [e.action for e in events] == ["claimed", "asked", "transferred"]
    claimed = events[0]
    assert claimed.actor_kind == "officer" and claimed.actor_id == officer_id
    assert (claimed.from_status, claimed.to_status) == ("new", "assigned")
    assert claimed.data == {"officer_id": officer_id, "via": "web"}
    async with env.service.session_factory() as db:
        kinds = (
            await db.scalars(
                select(OutboxMessage.kind).where(OutboxMessage.report_id == report.id)
            )
        ).all()
    assert "citizen_message" in kinds and "report_card" in kinds


async def test_reward_four_eyes_and_history(env: Env) -> None:
    await env.add_officer("lan", "officer", "qa")
    await env.add_officer("boss", "commander", name="Boss")
    await env.add_officer("boss2", "commander")
    report = await env.add_report(
        env.unit_a,
        status="resolved",
        outcome="clarified",
        contact_mode="relay",
        resolved_at=datetime.now(UTC),
    )
    assert await env.login("lan") == 303
    form = {"amount": "2.000.000", "reason": "Tin chính xác"}
    assert await env.post(f"/admin/reports/{report.code}/reward", form) == 303
    async with env.service.session_factory() as db:
        reward = await db.scalar(select(Reward).where(Reward.report_id == report.id))
        assert reward is not None and reward.amount_vnd == 2_000_000
        reward_id = reward.id
    decide = f"/admin/rewards/{reward_id}/decide"
    assert await env.post(decide, {"decision": "approve", "reason": "ok"}) == 403  # officer
    assert await env.login("boss") == 303
    page = await (await env.client.get("/admin/rewards")).text()
    assert "2.000.000" in page
    assert await env.post(decide, {"decision": "approve", "reason": ""}) == 409
    assert await env.post(decide, {"decision": "approve", "reason": "Đồng ý"}) == 303
    async with env.service.session_factory() as db:
        reward = await db.get(Reward, reward_id)
        assert reward is not None and reward.status == "approved"
        assert reward.claim_hash is not None  # the tipster was sent a claim code
    assert await env.post(decide, {"decision": "reject", "reason": "late"}) == 409
    actions = [e.action for e in await env.events(report.id)]
    assert actions == ["reward_proposed", "reward_approved"]


async def test_a_proposer_may_not_approve_their_own_reward(env: Env) -> None:
    await env.add_officer("boss", "commander")
    report = await env.add_report(
        env.unit_a, status="resolved", outcome="handled", resolved_at=datetime.now(UTC)
    )
    assert await env.login("boss") == 303
    form = {"amount": "500000", "reason": "Tin hữu ích"}
    assert await env.post(f"/admin/reports/{report.code}/reward", form) == 303
    async with env.service.session_factory() as db:
        reward = await db.scalar(select(Reward).where(Reward.report_id == report.id))
        assert reward is not None
    path = f"/admin/rewards/{reward.id}/decide"
    assert await env.post(path, {"decision": "approve", "reason": "tự duyệt"}) == 409
    async with env.service.session_factory() as db:
        again = await db.get(Reward, reward.id)
        assert again is not None and again.status == "proposed"


# --------------------------------------------------------------------------- lists, exports


async def test_keyset_pagination_walks_every_report_once(env: Env) -> None:
    await env.add_officer("chief", "admin")
    start = datetime.now(UTC) - timedelta(days=1)
    same_moment = start + timedelta(hours=1)
    codes = []
    for i in range(12):
        moment = same_moment if i in (4, 5, 6) else start + timedelta(minutes=i)
        codes.append((await env.add_report(env.unit_a, created_at=moment)).code)
    assert await env.login("chief") == 303
    seen: list[str] = []
    url: str | None = "/admin/reports"
    while url:
        body = await (await env.client.get(url)).text()
        seen += re.findall(r'href="/admin/reports/([A-Z0-9]{10})"', body)
        found = re.search(r'href="([^"]+)" rel="next"', body)
        url = found[1].replace("&amp;", "&") if found else None
    assert sorted(seen) == sorted(codes) and len(seen) == len(set(seen))


async def test_search_by_code_and_filters(env: Env) -> None:
    await env.add_officer("chief", "admin")
    theft = await env.add_report(env.unit_a, category="theft")
    drugs = await env.add_report(env.unit_b, category="drugs")
    assert await env.login("chief") == 303
    dashed = f"{theft.code[:5]}-{theft.code[5:]}".lower()
    body = await (await env.client.get(f"/admin/reports?code={dashed}")).text()
    assert theft.code in body and drugs.code not in body
    body = await (await env.client.get("/admin/reports?category=drugs")).text()
    assert drugs.code in body and theft.code not in body
    body = await (await env.client.get(f"/admin/reports?unit={env.unit_a}")).text()
    assert theft.code in body and drugs.code not in body


async def _seed_year(env: Env) -> int:
    year = datetime.now(local_zone()).year - 1
    moment = datetime(year, 6, 15, 10, 0, tzinfo=local_zone()).astimezone(UTC)
    resolved = moment + timedelta(days=2)
    for category, subjects, arrest in (
        ("theft", 2, True),
        ("theft", 1, True),
        ("robbery", 3, True),
        ("drugs", 4, False),
    ):
        await env.add_report(
            env.unit_a,
            category=category,
            status="resolved",
            outcome="clarified",
            subjects_handled=subjects,
            citizen_assisted_arrest=arrest,
            created_at=moment,
            claimed_at=moment + timedelta(minutes=30),
            resolved_at=resolved,
        )
    await env.add_report(
        env.unit_b,
        category="other",
        status="resolved",
        outcome="false_report",
        subjects_handled=0,
        created_at=moment,
        resolved_at=resolved,
    )
    paid = await env.add_report(
        env.unit_a,
        status="resolved",
        outcome="handled",
        subjects_handled=1,
        created_at=moment,
        resolved_at=resolved,
    )
    async with env.service.session_factory() as db, db.begin():
        for amount in (1_000_000, 2_500_000):
            db.add(
                Reward(
                    report_id=paid.id,
                    amount_vnd=amount,
                    reason="r",
                    status="paid" if amount == 1_000_000 else "rejected",
                    paid_at=resolved if amount == 1_000_000 else None,
                )
            )
    await env.add_report(None, kind="emergency", created_at=moment, status="new")
    return year


async def test_exports_hold_the_notice_figures(env: Env) -> None:
    await env.add_officer("boss", "commander")
    year = await _seed_year(env)
    assert await env.login("boss") == 303
    page = await (await env.client.get(f"/admin/stats?period={year}")).text()
    assert "1.000.000" in page

    response = await env.client.get(f"/admin/stats/export.csv?period={year}")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="tinbao-{year}.csv"'
    text = (await response.read()).decode("utf-8-sig")
    table = {(r[0], r[1]): int(r[3]) for r in list(csv.reader(io.StringIO(text)))[1:]}
    assert table[("total", "reports")] == 7
    assert table[("summary", "clarified")] == 4
    assert table[("summary", "subjects_handled")] == 11
    assert table[("summary", "assisted_arrests")] == 3
    assert table[("assisted_arrests", "theft")] == 2
    assert table[("assisted_arrests", "robbery")] == 1
    assert table[("summary", "rewards_paid")] == 1
    assert table[("summary", "rewards_paid_vnd")] == 1_000_000
    assert table[("category", "accident")] == 1
    assert table[("unit", env.unit_a)] == 5

    response = await env.client.get(f"/admin/stats/export.xlsx?period={year}")
    assert response.status == 200
    book = load_workbook(io.BytesIO(await response.read()))
    summary = {row[0]: row[2] for row in book["Kết quả"].iter_rows(min_row=2, values_only=True)}
    assert summary["clarified"] == 4 and summary["subjects_handled"] == 11
    assert summary["rewards_paid_vnd"] == 1_000_000
    arrests = {
        row[0]: row[2]
        for row in book["Bắt giữ có dân tham gia"].iter_rows(min_row=2, values_only=True)
    }
    assert arrests == {"theft": 2, "robbery": 1}

    month = await (await env.client.get(f"/admin/stats/export.csv?period={year}-05")).read()
    assert "total,reports,Tin báo tiếp nhận,0" in month.decode("utf-8-sig").replace("\r", "")


async def test_claim_time_percentiles(env: Env) -> None:
    await env.add_officer("chief", "admin")
    now = datetime.now(UTC) - timedelta(hours=5)
    for minutes in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100):
        await env.add_report(
            env.unit_a,
            created_at=now,
            status="assigned",
            claimed_at=now + timedelta(minutes=minutes),
        )
    from admin.queries import Period, stats

    async with env.service.session_factory() as db:
        figures = await stats(db, Period.parse(None), None)
    assert figures.claim.count == 10
    assert figures.claim.median == pytest.approx(55 * 60, abs=1)
    assert figures.claim.p90 == pytest.approx(91 * 60, abs=1)


async def test_dashboard_reads_the_rollups_and_agrees_with_a_recount(env: Env) -> None:
    """The landing page reads this month from the statistics rollups (fast at any number of
    reports); its counts equal a recount from the reports table, within the viewer's scope."""
    from admin.dashboard_views import as_stats
    from admin.queries import Period, stats
    from admin.stats.queries import figures, period_months

    await env.add_officer("chief", "admin")
    await env.add_officer("lan", "officer", "qa")
    now = datetime.now(UTC)
    for status, minutes in (("new", None), ("assigned", 12), ("resolved", 40)):
        claimed = now + timedelta(minutes=minutes) if minutes else None
        await env.add_report(env.unit_a, status=status, created_at=now, claimed_at=claimed)
    await env.add_report(env.unit_b, category="drugs", created_at=now)
    await env.add_report(
        env.unit_b,
        kind="emergency",
        status="acknowledged",
        created_at=now,
        acknowledged_at=now + timedelta(seconds=90),
    )
    await env.add_report(None, category="fraud", created_at=now)  # unit unknown
    period = Period.parse(None)
    async with env.service.session_factory() as db:
        recount = await stats(db, period, None)
        shown = as_stats(period, await figures(db, period_months(period), None))
    assert shown.total == recount.total == 6
    assert shown.by_status == recount.by_status
    assert shown.by_category == recount.by_category
    assert shown.by_unit == recount.by_unit
    assert shown.claim.count == recount.claim.count == 2
    assert shown.acknowledge.count == recount.acknowledge.count == 1
    # Interpolated within the histogram's bucket (60-120 s) that holds the one 90 s sample.
    assert shown.acknowledge.median is not None and 60 <= shown.acknowledge.median <= 120

    assert await env.login("chief") == 303
    page = await (await env.client.get("/admin/")).text()
    assert '<p class="big">6</p>' in page
    assert await env.login("lan") == 303
    page = await (await env.client.get("/admin/")).text()
    assert '<p class="big">3</p>' in page  # queue A's unit only


# --------------------------------------------------------------------------- CLI


async def test_create_user_prints_nothing_secret(
    env: Env, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import asyncio

    from admin.cli import create_user

    monkeypatch.setenv("TINBAO_DATABASE_URL", db_url)
    monkeypatch.setenv("TINBAO_SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("TINBAO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TINBAO_ADMIN_PASSWORD", PASSWORD)
    argv = ["--username", "first", "--role", "admin", "--name", "Trưởng phòng"]
    code = await asyncio.to_thread(create_user, argv)
    out = capsys.readouterr()
    assert code == 0
    assert PASSWORD not in out.out + out.err
    assert await asyncio.to_thread(create_user, argv) == 1  # exists
    short = ["--username", "x2", "--role", "officer", "--queue", "qa"]
    monkeypatch.setenv("TINBAO_ADMIN_PASSWORD", "short")
    assert await asyncio.to_thread(create_user, short) == 2
    assert await env.login("first") == 303
