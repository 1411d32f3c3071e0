"""Rewards: proposals awaiting a second pair of eyes, decisions and payouts."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from sqlalchemy import select

import admin.params as params
from admin.context import (
    PREFIX,
    officer_names,
    officer_of,
    panel_of,
    refusal_status,
    render,
    scope_of,
)
from admin.scope import sees_all
from handlers.officers import may
from handlers.report_actions import ActionError
from handlers.report_actions import ReportActions as WebTriage
from storage.models import Report, Reward

log = logging.getLogger(__name__)


async def rewards_page(
    request: web.Request, *, error: str | None = None, values: dict[str, Any] | None = None
) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    scope = scope_of(request)
    async with panel.runtime.session_factory() as db:
        base = select(Reward, Report).join(Report, Report.id == Reward.report_id)
        if scope is not None:
            base = base.where(scope)
        pending = (
            await db.execute(base.where(Reward.status == "proposed").order_by(Reward.proposed_at))
        ).all()
        history = (
            await db.execute(
                base.where(Reward.status != "proposed").order_by(Reward.id.desc()).limit(200)
            )
        ).all()
        ids: set[int] = set()
        for reward, _ in [*pending, *history]:
            ids |= {
                i
                for i in (reward.proposed_by_id, reward.decided_by_id, reward.paid_by_id)
                if i is not None
            }
        names = await officer_names(db, ids)
        work = WebTriage(db, officer, panel.triage)
        can_decide = {
            reward.id: work.allowed("reward_decide", report)
            and reward.proposed_by_id != officer.id
            for reward, report in pending
        }
    return render(
        request,
        "rewards.html",
        status=refusal_status(error),
        pending=pending,
        history=history,
        names=names,
        can_decide=can_decide,
        error=error,
        error_values=values or {},
        done=request.query.get("done") == "1",
    )


async def reward_decide(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    form = await request.post()
    reward_id = params.path_id(request.match_info, "reward_id")
    decision = params.text(form, "decision", limit=16)
    reason = params.text(form, "reason", limit=2000)
    report_id: int | None = None
    try:
        async with panel.runtime.session_factory() as db, db.begin():
            reward = await db.get(Reward, reward_id)
            report = await db.get(Report, reward.report_id) if reward else None
            if reward is None or report is None:
                raise web.HTTPNotFound()
            work = WebTriage(db, officer, panel.triage)
            if not sees_all(officer) and not may(officer, "view", work.queue_key(report)):
                raise web.HTTPNotFound()
            if decision not in ("approve", "reject"):
                raise ActionError("admin.error.bad_decision")
            commendation = form.get("commendation") if decision == "approve" else None
            await work.decide_reward(
                reward_id,
                approve=decision == "approve",
                reason=reason,
                commendation=commendation
                if isinstance(commendation, str) and commendation
                else None,
            )
            report_id = report.id
    except ActionError as refused:
        return await rewards_page(request, error=refused.key, values=refused.values)
    log.info("web reward %s %s by officer %s", reward_id, decision, officer.id)
    if report_id is not None:
        await panel.runtime.report_changed(report_id)
    raise web.HTTPSeeOther(f"{PREFIX}/rewards?done=1")


async def reward_pay(request: web.Request) -> web.StreamResponse:
    panel = panel_of(request)
    officer = officer_of(request)
    form = await request.post()
    claim = params.text(form, "claim", limit=200)
    reference = params.text(form, "reference", limit=2000)
    refused: ActionError | None = None
    report_id: int | None = None
    async with panel.runtime.session_factory() as db, db.begin():
        try:
            reward = await WebTriage(db, officer, panel.triage).pay_reward(claim, reference)
            report_id = reward.report_id
        except ActionError as error:
            refused = error  # a wrong code is counted: commit anyway
    if refused is not None:
        return await rewards_page(request, error=refused.key, values=refused.values)
    if report_id is not None:
        await panel.runtime.report_changed(report_id)
    raise web.HTTPSeeOther(f"{PREFIX}/rewards?done=1")
