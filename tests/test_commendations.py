"""Commendations: a commander marks a reward as coming with a commendation (individual or
collective) when approving, in the rewards chat or on the panel; the statistics count them by
kind. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from handlers.i18n import t
from handlers.rewards import RewardError, Rewards, RewardSettings
from handlers.security import Keyring
from storage.models import Officer, ReportEvent, Reward
from tests.test_admin import Env, env  # noqa: F401 (the panel fixture)
from tests.test_rewards_chat import (  # noqa: F401 (the chat fixture)
    OFFICER,
    REWARDS_CHAT,
    SECOND_COMMANDER,
    TEST_KEY,
    posted,
    resolved_tip,
    world,
)


async def _chat_proposal(world, user_id):  # noqa: F811
    report, card = await resolved_tip(world, user_id)
    await world.press(OFFICER, f"r:rwd:{report.id}", card)
    await world.say(OFFICER, "2.000.000 Thông tin giúp bắt quả tang")
    post = (await world.outbox("chat_text"))[-2]
    message_id = await posted(world, REWARDS_CHAT, report.id)
    return report, post.payload["buttons"], message_id


async def test_chat_approval_with_a_collective_commendation(world):  # noqa: F811
    _, buttons, message_id = await _chat_proposal(world, 9201)
    # Row 1: approve, reject; row 2: approve with an individual / a collective commendation.
    assert [b["label"] for b in buttons[1]] == [
        t("vi", "commendation.btn.individual"),
        t("vi", "commendation.btn.collective"),
    ]
    collective = buttons[1][1]["data"]
    assert collective.startswith("w:okc:")
    outcome = await world.press(SECOND_COMMANDER, collective, message_id, chat_id=REWARDS_CHAT)
    assert outcome.notice == t("vi", "triage.prompt.sent")
    await world.say(SECOND_COMMANDER, "Nhóm dân phòng hỗ trợ bắt giữ", chat_id=REWARDS_CHAT)
    async with world.session_factory() as session:
        reward = await session.scalar(select(Reward))
        assert reward.status == "approved" and reward.commendation == "collective"
        event = await session.scalar(
            select(ReportEvent).where(ReportEvent.action == "reward_approved")
        )
        assert event.data["commendation"] == "collective"


async def test_chat_plain_approval_has_no_commendation(world):  # noqa: F811
    _, buttons, message_id = await _chat_proposal(world, 9202)
    await world.press(SECOND_COMMANDER, buttons[0][0]["data"], message_id, chat_id=REWARDS_CHAT)
    await world.say(SECOND_COMMANDER, "Đúng quy định", chat_id=REWARDS_CHAT)
    async with world.session_factory() as session:
        reward = await session.scalar(select(Reward))
        assert reward.status == "approved" and reward.commendation is None


async def test_a_forged_commendation_press_is_refused(world):  # noqa: F811
    _, buttons, message_id = await _chat_proposal(world, 9203)
    forged = buttons[0][0]["data"].replace("w:ok:", "w:okx:")
    outcome = await world.press(SECOND_COMMANDER, forged, message_id, chat_id=REWARDS_CHAT)
    assert outcome.notice == t("vi", "triage.unknown_button")


@pytest.mark.parametrize(("approve", "kind"), [(False, "individual"), (True, "honorary")])
async def test_a_commendation_goes_with_an_approval_of_a_known_kind(
    world,  # noqa: F811
    approve: bool,
    kind: str,
):
    report, _, _ = await _chat_proposal(world, 9204)
    async with world.session_factory() as session:
        reward = await session.scalar(select(Reward))
        commander = await session.scalar(
            select(Officer).where(Officer.telegram_user_id == SECOND_COMMANDER)
        )
        with pytest.raises(RewardError) as refused:
            await Rewards(session, keyring=Keyring(TEST_KEY), settings=RewardSettings()).decide(
                reward.id,
                commander,
                approve=approve,
                reason="x",
                queue_key=report.queue_key,
                commendation=kind,
            )
        assert refused.value.key == "commendation.bad"
        assert (await session.get(Reward, reward.id)).status == "proposed"


async def test_panel_approval_with_a_commendation_is_counted_by_kind(env: Env) -> None:  # noqa: F811
    await env.add_officer("canbo", "officer", name="Cán bộ")
    commander = await env.add_officer("chihuy", "commander", name="Chỉ huy")
    proposer = await env.add_officer("canbo2", "commander", name="Đề xuất")
    rewards = []
    for _ in range(3):
        report = await env.add_report(env.unit_a, status="resolved", outcome="clarified")
        async with env.service.session_factory() as db, db.begin():
            reward = Reward(
                report_id=report.id,
                amount_vnd=1_000_000,
                reason="Tin chính xác",
                status="proposed",
                proposed_by_id=proposer,
            )
            db.add(reward)
            await db.flush()
            rewards.append(reward.id)
    assert await env.login("chihuy") in (302, 303)
    page = await env.client.get("/admin/rewards")
    assert 'name="commendation"' in await page.text()
    decisions = [("approve", "individual"), ("approve", "collective"), ("reject", "collective")]
    for reward_id, (decision, kind) in zip(rewards, decisions, strict=True):
        status = await env.post(
            f"/admin/rewards/{reward_id}/decide",
            {"decision": decision, "reason": "Theo quy định", "commendation": kind},
            csrf=await env.csrf("/admin/rewards"),
        )
        assert status in (302, 303)
    async with env.service.session_factory() as db:
        stored = {r.id: r for r in (await db.scalars(select(Reward))).all()}
    assert [stored[i].commendation for i in rewards] == ["individual", "collective", None]
    assert all(stored[i].decided_by_id == commander for i in rewards)
    now = datetime.now(UTC).astimezone()
    period = f"{now.year}-{now.month:02d}"
    report_page = await (await env.client.get(f"/admin/stats/report?period={period}")).text()
    expected = t("vi", "commendation.report", collective=1, individual=1)
    assert expected in report_page
    exported = await (await env.client.get(f"/admin/stats/export.csv?period={period}")).text()
    rows = {row[1]: row[3] for row in csv.reader(io.StringIO(exported.lstrip("\ufeff")))}
    assert rows["commendations"] == "2"
    assert rows["commendations_individual"] == "1" and rows["commendations_collective"] == "1"
