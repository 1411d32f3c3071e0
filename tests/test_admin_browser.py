"""The panel in a real browser: Debian's chromium driven by Playwright (issue 6, "A real browser").

A commander signs in, filters the reports list, opens a report, approves a reward another officer
proposed (four eyes), and downloads the month's XLSX export, whose figures are checked against
the seeded data. Accounts are created with ``tinbao admin create-user`` (:func:`admin.cli.
create_user`); the rewards are proposed through :class:`handlers.rewards.Rewards`, which the chat
and the panel both call.

Skipped without chromium or Playwright, unless ``TINBAO_REQUIRE_BROWSER=1`` (CI): see
:mod:`tests.admin_browser_support`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from admin.cli import create_user
from admin.queries import Period
from admin.web import build_web_app
from bot.runtime import Service
from config.catalogue import load_catalogue
from config.settings import load_settings
from handlers.i18n import t
from handlers.rewards import Rewards
from handlers.security import format_code, new_tracking_code
from storage.models import ContactRoute, Officer, Report, Reward
from tests.admin_browser_support import TIMEOUT_MS, chromium, require_browser, serve
from tests.e2e import TEST_SECRET_KEY

PASSWORD = "correct horse battery staple"
OFFICER_REWARD_VND = 2_000_000
PAID_REWARD_VND = 500_000
APPROVAL_REASON = "Tin chính xác, đồng ý khen thưởng"


def vi(key: str, **values: object) -> str:
    return t("vi", key, **values)


@dataclass
class Seeded:
    """What the browser should find: report codes by role in the story, and the month."""

    period: Period
    unit_a: str
    unit_b: str
    theft_new: Report
    theft_assigned: Report
    theft_paid: Report
    drugs_new: Report
    robbery_clarified: Report
    robbery_own_proposal: Report
    emergency: Report
    commander_id: int
    officer_reward_id: int


@dataclass
class Panel:
    service: Service
    base_url: str
    seeded: Seeded


def _month_moment(period: Period, minutes_ago: int) -> datetime:
    """``minutes_ago`` before now, but never before the start of this month (run on the 1st)."""
    return max(datetime.now(UTC) - timedelta(minutes=minutes_ago), period.start)


async def _add_report(
    service: Service,
    unit: str | None,
    *,
    created_at: datetime,
    category: str | None = "theft",
    kind: str = "tip",
    status: str = "new",
    contact_mode: str = "none",
    **extra: Any,
) -> Report:
    async with service.session_factory() as db, db.begin():
        report = Report(
            code=new_tracking_code(),
            kind=kind,
            category=category if kind == "tip" else None,
            unit_code=unit,
            description=f"Tin báo thử: {category or kind}",
            contact_mode=contact_mode,
            pin_hash="x",
            locale="vi",
            channel="telegram",
            status=status,
            created_at=created_at,
            **extra,
        )
        db.add(report)
        await db.flush()
        if contact_mode != "none":
            db.add(ContactRoute(report_id=report.id, sender_key="k" * 64, route="x"))
        return report


async def _officer(service: Service, username: str) -> Officer:
    async with service.session_factory() as db:
        officer = await db.scalar(select(Officer).where(Officer.username == username))
        assert officer is not None, username
        return officer


async def _propose(service: Service, proposer: str, report: Report, amount_vnd: int) -> int:
    """A reward proposal through :class:`handlers.rewards.Rewards`, as the chat and panel do."""
    triage = service.dispatcher.triage
    assert triage.keyring is not None
    async with service.session_factory() as db, db.begin():
        officer = await _officer(service, proposer)
        fresh = await db.get(Report, report.id)
        assert fresh is not None
        queue = triage.queue_of(fresh)
        rewards = Rewards(db, keyring=triage.keyring, settings=triage.reward_settings)
        reward = await rewards.propose(
            fresh,
            officer,
            amount_vnd,
            "Tin chính xác, bắt được đối tượng",
            queue_key=queue.key if queue is not None else None,
        )
        return reward.id


async def _seed(service: Service, unit_a: str, unit_b: str) -> Seeded:
    period = Period.parse(None)
    now = datetime.now(UTC)

    def at(minutes_ago: int) -> datetime:
        return _month_moment(period, minutes_ago)

    resolved: dict[str, Any] = {"status": "resolved", "resolved_at": now, "claimed_at": at(50)}
    theft_new = await _add_report(service, unit_a, created_at=at(10))
    theft_assigned = await _add_report(
        service, unit_a, created_at=at(20), status="assigned", claimed_at=at(15)
    )
    theft_paid = await _add_report(
        service,
        unit_b,
        created_at=at(30),
        outcome="handled",
        subjects_handled=1,
        citizen_assisted_arrest=False,
        **resolved,
    )
    drugs_new = await _add_report(service, unit_b, category="drugs", created_at=at(40))
    robbery_clarified = await _add_report(
        service,
        unit_a,
        category="robbery",
        created_at=at(60),
        contact_mode="relay",  # the approval sends the tipster a claim code
        outcome="clarified",
        subjects_handled=3,
        citizen_assisted_arrest=True,
        **resolved,
    )
    robbery_own_proposal = await _add_report(
        service,
        unit_a,
        category="robbery",
        created_at=at(70),
        outcome="handled",
        subjects_handled=0,
        citizen_assisted_arrest=False,
        **resolved,
    )
    emergency = await _add_report(service, None, kind="emergency", created_at=at(5))

    # A reward paid this month: it is what the export's "rewards paid" counts.
    async with service.session_factory() as db, db.begin():
        db.add(
            Reward(
                report_id=theft_paid.id,
                amount_vnd=PAID_REWARD_VND,
                reason="Tin hữu ích",
                status="paid",
                proposed_at=now,
                decided_at=now,
                paid_at=now,
                payout_reference="PC-001",
            )
        )
    # The officer's proposal awaits the commander; the commander's own awaits someone else.
    officer_reward_id = await _propose(service, "lan", robbery_clarified, OFFICER_REWARD_VND)
    await _propose(service, "boss", robbery_own_proposal, 300_000)
    commander = await _officer(service, "boss")
    return Seeded(
        period=period,
        unit_a=unit_a,
        unit_b=unit_b,
        theft_new=theft_new,
        theft_assigned=theft_assigned,
        theft_paid=theft_paid,
        drugs_new=drugs_new,
        robbery_clarified=robbery_clarified,
        robbery_own_proposal=robbery_own_proposal,
        emergency=emergency,
        commander_id=commander.id,
        officer_reward_id=officer_reward_id,
    )


@pytest.fixture
async def panel(
    db_url: str, engine: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Panel]:
    require_browser()
    units = [u.code for u in load_catalogue().units]
    unit_a, unit_b = units[0], units[1]
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "qa"\nname = "Queue A"\nchat_id = -1001\nunits = ["{unit_a}"]\n'
        f'[[queue]]\nkey = "qb"\nname = "Queue B"\nchat_id = -1002\nunits = ["{unit_b}"]\n',
        encoding="utf-8",
    )
    for name, value in {
        "TINBAO_DATABASE_URL": db_url,
        "TINBAO_SECRET_KEY": TEST_SECRET_KEY,
        "TINBAO_DATA_DIR": str(tmp_path),
        "TINBAO_QUEUES_FILE": str(queues),
        "TINBAO_DUTY_CHAT_ID": "-1009",
        "TINBAO_ADMIN_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)
    # The accounts, as an operator makes them: `tinbao admin create-user`.
    for argv in (
        ["--username", "boss", "--role", "commander", "--name", "Chỉ huy Minh"],
        ["--username", "lan", "--role", "officer", "--queue", "qa", "--name", "Cán bộ Lan"],
    ):
        assert await asyncio.to_thread(create_user, argv) == 0, argv

    service = await Service.create(load_settings())
    try:
        seeded = await _seed(service, unit_a, unit_b)
        async with serve(build_web_app(service)) as base_url:
            yield Panel(service, base_url, seeded)
    finally:
        await service.stop()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_commander_filters_approves_and_exports_in_a_browser(
    panel: Panel, tmp_path: Path
) -> None:
    from playwright.async_api import ConsoleMessage, expect

    seeded, base = panel.seeded, panel.base_url
    expect.set_options(timeout=TIMEOUT_MS)
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True, locale="vi-VN")
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        problems: list[str] = []  # CSP violations, script errors and failed loads show up here

        def on_console(message: ConsoleMessage) -> None:
            # The panel has no favicon: chromium's own request for /favicon.ico 404s.
            if message.type == "error" and message.location.get("url") != f"{base}/favicon.ico":
                problems.append(f"console: {message.text} at {message.location.get('url')}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

        # ---- sign in: the panel sends an anonymous visitor to the login form, then back.
        await page.goto(f"{base}/admin/reports")
        await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
        await page.locator('input[name="username"]').fill("boss")
        await page.locator('input[name="password"]').fill(PASSWORD)
        await page.locator('form[action="/admin/login"] button[type="submit"]').click()
        await expect(page).to_have_url(f"{base}/admin/reports")
        await expect(page.locator("header .who")).to_contain_text("Chỉ huy Minh")
        rows = page.locator("table.list tbody tr")
        await expect(rows).to_have_count(7)

        # ---- filter the list: by category, then by category and status.
        filters = page.locator("#report-filters")
        await filters.locator('select[name="category"]').select_option("theft")
        await filters.locator('button[type="submit"]').click()
        await expect(page).to_have_url(re.compile(r"[?&]category=theft(&|$)"))
        await expect(rows).to_have_count(3)
        await expect(rows.locator("td:nth-child(1)")).to_have_text(
            [  # newest first
                format_code(seeded.theft_new.code),
                format_code(seeded.theft_assigned.code),
                format_code(seeded.theft_paid.code),
            ]
        )
        await expect(rows.locator("td:nth-child(3)")).to_have_text([vi("cat.theft")] * 3)

        await filters.locator('select[name="status"]').select_option("new")
        await filters.locator('button[type="submit"]').click()
        await expect(page).to_have_url(re.compile(r"[?&]status=new(&|$)"))
        await expect(rows).to_have_count(1)
        await expect(rows.first.locator("td").nth(0)).to_have_text(
            format_code(seeded.theft_new.code)
        )
        await expect(rows.first.locator("td").nth(4)).to_have_text(vi("officer.status.new"))
        # The form keeps the filters it applied.
        await expect(filters.locator('select[name="category"]')).to_have_value("theft")

        await filters.locator('select[name="category"]').select_option("robbery")
        await filters.locator('select[name="status"]').select_option("resolved")
        await filters.locator('button[type="submit"]').click()
        await expect(page).to_have_url(re.compile(r"[?&]status=resolved(&|$)"))
        await expect(rows).to_have_count(2)
        await expect(rows.locator("td:nth-child(5)")).to_have_text(
            [vi("officer.status.resolved")] * 2
        )

        # ---- open the clarified report.
        code = seeded.robbery_clarified.code
        await page.get_by_role("link", name=format_code(code), exact=True).click()
        await expect(page).to_have_url(f"{base}/admin/reports/{code}")
        await expect(page.locator("h1")).to_have_text(f"{format_code(code)} · {vi('cat.robbery')}")
        await expect(page.locator("#status")).to_have_text(
            f"{vi('officer.status.resolved')} · {vi('outcome.clarified')}"
        )
        facts = page.locator("dl.facts")
        await expect(
            facts.locator(f"dt:text-is('{vi('admin.report.subjects')}') + dd")
        ).to_have_text("3")
        await expect(
            facts.locator(f"dt:text-is('{vi('admin.report.arrest')}') + dd")
        ).to_have_text(vi("admin.yes"))
        await expect(page.locator("main")).to_contain_text(vi("admin.reward.status.proposed"))
        await expect(page.locator("main")).to_contain_text("2.000.000")

        # ---- approve the officer's reward; the commander's own proposal needs another's eyes.
        await page.locator("header nav").get_by_role("link", name=vi("admin.nav.rewards")).click()
        await expect(page).to_have_url(f"{base}/admin/rewards")
        pending = page.locator("#pending tbody tr")
        await expect(pending).to_have_count(2)
        own = pending.filter(has_text=format_code(seeded.robbery_own_proposal.code))
        await expect(own).to_contain_text(vi("admin.rewards.four_eyes"))
        await expect(own.locator("form")).to_have_count(0)
        theirs = pending.filter(has_text=format_code(code))
        await expect(theirs).to_contain_text("Cán bộ Lan")
        await expect(theirs).to_contain_text("2.000.000")
        await theirs.locator('input[name="reason"]').fill(APPROVAL_REASON)
        await theirs.locator('button[value="approve"]').click()
        await expect(page).to_have_url(f"{base}/admin/rewards?done=1")
        await expect(page.locator("p.flash.ok")).to_be_visible()
        await expect(pending).to_have_count(1)
        await expect(pending.first).to_contain_text(format_code(seeded.robbery_own_proposal.code))
        approved = page.locator("#history tbody tr").filter(has_text=format_code(code))
        await expect(approved).to_contain_text(vi("admin.reward.status.approved"))
        await expect(approved).to_contain_text("Chỉ huy Minh")
        await expect(approved).to_contain_text(APPROVAL_REASON)

        # ---- statistics, and the month's XLSX export.
        await page.locator("header nav").get_by_role("link", name=vi("admin.nav.stats")).click()
        await expect(page).to_have_url(f"{base}/admin/stats")
        if Period.parse(None) != seeded.period:  # the month turned while the test ran
            await page.goto(f"{base}/admin/stats?period={seeded.period.key}")
        summary = page.locator("#summary")
        await expect(
            summary.locator(f"th:text-is('{vi('admin.summary.clarified')}') + td")
        ).to_have_text("1")
        await expect(
            summary.locator(f"th:text-is('{vi('admin.summary.subjects')}') + td")
        ).to_have_text("4")
        async with page.expect_download() as download_info:
            await page.locator("#export-xlsx").click()
        download = await download_info.value
        assert await download.failure() is None
        assert download.suggested_filename == f"tinbao-{seeded.period.key}.xlsx"
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        await context.close()

    assert problems == []

    # ---- the export's figures are the seeded month's.
    book = load_workbook(saved, read_only=True)

    def sheet(section: str) -> dict[str, Any]:
        rows = book[vi(f"admin.export.sheet.{section}")].iter_rows(min_row=2, values_only=True)
        return {"" if row[0] is None else str(row[0]): row[2] for row in rows}

    assert sheet("total") == {"reports": 7}
    assert sheet("category") == {"theft": 3, "robbery": 2, "drugs": 1, "accident": 1}
    assert sheet("status") == {"new": 3, "assigned": 1, "resolved": 3}
    # The emergency has no unit (an empty key).
    assert sheet("unit") == {seeded.unit_a: 4, seeded.unit_b: 2, "": 1}
    assert sheet("summary") == {
        "clarified": 1,
        "subjects_handled": 4,  # 3 (clarified) + 1 (handled) + 0
        "assisted_arrests": 1,
        "rewards_paid": 1,  # the approved reward is not paid yet
        "rewards_paid_vnd": PAID_REWARD_VND,
        "commendations": 0,  # approved without one
    }
    assert sheet("assisted_arrests") == {"robbery": 1}
    book.close()

    # ---- and the approval is the four-eyes decision, recorded as the commander's.
    async with panel.service.session_factory() as db:
        reward = await db.get(Reward, seeded.officer_reward_id)
        assert reward is not None
        assert reward.status == "approved" and reward.amount_vnd == OFFICER_REWARD_VND
        assert reward.decided_by_id == seeded.commander_id
        assert reward.proposed_by_id != seeded.commander_id
        assert reward.decision_reason == APPROVAL_REASON
        assert reward.claim_hash is not None  # the tipster was sent a claim code
