"""The reward workflow: every transition, four eyes, claim codes, races on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from handlers.officers import Registry
from handlers.rewards import (
    RewardError,
    Rewards,
    RewardSettings,
    format_claim_code,
    parse_amount,
)
from handlers.security import Keyring
from storage.models import Officer, Report, ReportEvent, Reward
from storage.types import utcnow
from tests.driver import TEST_KEY, sync_units

KEYRING = Keyring(TEST_KEY)
SETTINGS = RewardSettings(cap_vnd=5_000_000, claim_attempts=3, claim_window=timedelta(minutes=15))


@pytest.fixture
async def seeded(session_factory):
    await sync_units(session_factory)
    async with session_factory() as session, session.begin():
        registry = Registry(session)
        officer = await registry.enrol(
            telegram_user_id=11, display_name="A", role="officer", queue_key="lx", by=None
        )
        commander = await registry.enrol(
            telegram_user_id=12, display_name="B", role="commander", queue_key="lx", by=None
        )
        commander2 = await registry.enrol(
            telegram_user_id=13, display_name="C", role="commander", queue_key="lx", by=None
        )
        outsider = await registry.enrol(
            telegram_user_id=14, display_name="D", role="officer", queue_key="cd", by=None
        )
        report = Report(
            code="RWRDTEST22",
            kind="tip",
            category="theft",
            unit_code="30307",
            contact_mode="relay",
            pin_hash="x",
            locale="vi",
            channel="telegram",
            status="resolved",
            outcome="clarified",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(report)
        await session.flush()
        ids = {
            "officer": officer.id,
            "commander": commander.id,
            "commander2": commander2.id,
            "outsider": outsider.id,
            "report": report.id,
        }
    return ids


def queue_of(report: Report) -> str:
    return "lx"


async def run(session_factory, fn):
    """As the chat and the panel call it: a refusal still commits (it may count a guess)."""
    async with session_factory() as session:
        async with session.begin():
            try:
                return await fn(session, Rewards(session, keyring=KEYRING, settings=SETTINGS))
            except RewardError as refused:
                error = refused
        raise error


async def officer(session, officer_id) -> Officer:
    found = await session.get(Officer, officer_id)
    assert found is not None
    return found


async def propose(session_factory, ids, amount=2_000_000, who="officer"):
    async def go(session, rewards):
        report = await session.get(Report, ids["report"])
        return (
            await rewards.propose(
                report,
                await officer(session, ids[who]),
                amount,
                "Thông tin giúp bắt quả tang",
                queue_key="lx",
            )
        ).id

    return await run(session_factory, go)


async def decide(session_factory, ids, reward_id, who="commander", approve=True):
    async def go(session, rewards):
        return await rewards.decide(
            reward_id,
            await officer(session, ids[who]),
            approve=approve,
            reason="Đúng quy định",
            queue_key="lx",
        )

    return await run(session_factory, go)


async def claim_code(session_factory, reward_id) -> str:
    async def go(session, rewards):
        return await rewards.issue_claim_code(await session.get(Reward, reward_id))

    return await run(session_factory, go)


async def pay(session_factory, ids, code, who="officer", reference="PC-2026-001"):
    async def go(session, rewards):
        return await rewards.pay(
            await officer(session, ids[who]), code, reference, queue_of=queue_of
        )

    return await run(session_factory, go)


async def test_the_happy_path_is_audited(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    reward = await decide(session_factory, seeded, reward_id)
    assert reward.status == "approved"
    code = await claim_code(session_factory, reward_id)
    async with session_factory() as session:
        stored = await session.get(Reward, reward_id)
        assert stored.claim_hash and code not in stored.claim_hash
    paid = await pay(session_factory, seeded, format_claim_code(code).lower())
    assert paid.status == "paid" and paid.payout_reference == "PC-2026-001"
    async with session_factory() as session:
        actions = (
            await session.scalars(select(ReportEvent.action).order_by(ReportEvent.id))
        ).all()
    assert list(actions) == ["reward_proposed", "reward_approved", "reward_paid"]
    # The code never works twice.
    with pytest.raises(RewardError) as error:
        await pay(session_factory, seeded, code)
    assert error.value.key == "reward.wrong_code"


@pytest.mark.parametrize(
    ("amount", "key"),
    [(0, "reward.bad_amount"), (-5, "reward.bad_amount"), (5_000_001, "reward.bad_amount")],
)
async def test_amount_guard(session_factory, seeded, amount, key):
    with pytest.raises(RewardError) as error:
        await propose(session_factory, seeded, amount=amount)
    assert error.value.key == key


async def test_only_rewardable_outcomes(session_factory, seeded):
    async with session_factory() as session, session.begin():
        report = await session.get(Report, seeded["report"])
        report.outcome = "false_report"
    with pytest.raises(RewardError) as error:
        await propose(session_factory, seeded)
    assert error.value.key == "reward.not_rewardable"


async def test_one_active_reward_per_report(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    with pytest.raises(RewardError) as error:
        await propose(session_factory, seeded)
    assert error.value.key == "reward.already_active"
    await decide(session_factory, seeded, reward_id, approve=False)
    # After a rejection a new proposal is possible.
    assert await propose(session_factory, seeded) != reward_id


async def test_four_eyes(session_factory, seeded):
    reward_id = await propose(session_factory, seeded, who="commander")
    with pytest.raises(RewardError) as error:
        await decide(session_factory, seeded, reward_id, who="commander")
    assert error.value.key == "reward.four_eyes"
    assert (
        await decide(session_factory, seeded, reward_id, who="commander2")
    ).status == "approved"


async def test_permissions(session_factory, seeded):
    with pytest.raises(RewardError) as error:
        await propose(session_factory, seeded, who="outsider")
    assert error.value.key == "triage.not_permitted"
    reward_id = await propose(session_factory, seeded)
    with pytest.raises(RewardError) as error:
        await decide(session_factory, seeded, reward_id, who="outsider")
    assert error.value.key == "triage.not_permitted"


async def test_illegal_transitions(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    await decide(session_factory, seeded, reward_id, approve=False)
    for approve in (True, False):
        with pytest.raises(RewardError) as error:
            await decide(session_factory, seeded, reward_id, who="commander2", approve=approve)
        assert error.value.key == "reward.already_rejected"
    with pytest.raises(RewardError) as error:
        await claim_code(session_factory, reward_id)
    assert error.value.key == "reward.not_approved"
    second = await propose(session_factory, seeded)
    # Not approved yet: there is no claim code to pay with.
    with pytest.raises(RewardError):
        await claim_code(session_factory, second)
    await decide(session_factory, seeded, second)
    code = await claim_code(session_factory, second)
    await pay(session_factory, seeded, code)
    with pytest.raises(RewardError) as error:
        await decide(session_factory, seeded, second, who="commander2", approve=False)
    assert error.value.key == "reward.already_paid"


async def test_a_new_claim_code_replaces_the_old_one(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    await decide(session_factory, seeded, reward_id)
    old = await claim_code(session_factory, reward_id)
    new = await claim_code(session_factory, reward_id)
    with pytest.raises(RewardError):
        await pay(session_factory, seeded, old)
    assert (await pay(session_factory, seeded, new)).status == "paid"


async def test_wrong_claim_codes_are_rate_limited(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    await decide(session_factory, seeded, reward_id)
    code = await claim_code(session_factory, reward_id)
    for guess in ("AAAA-BBBB-CCCC", "not a code", "2222-3333-4444"):
        with pytest.raises(RewardError) as error:
            await pay(session_factory, seeded, guess)
        assert error.value.key == "reward.wrong_code"
    with pytest.raises(RewardError) as error:
        await pay(session_factory, seeded, code)  # even the right code, while locked
    assert error.value.key == "reward.locked"


def test_parse_amount():
    assert parse_amount("2.000.000") == 2_000_000
    assert parse_amount("2,000,000đ") == 2_000_000
    assert parse_amount("500000 VND") == 500_000
    assert parse_amount("hai triệu") is None
    assert parse_amount("-5") is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_concurrent_approvals_leave_one_effect(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    started = asyncio.Event()

    async def approve(who):
        async with session_factory() as session, session.begin():
            rewards = Rewards(session, keyring=KEYRING, settings=SETTINGS)
            me = await officer(session, seeded[who])
            await session.get(Reward, reward_id)  # both read "proposed" first
            started.set()
            return await rewards.decide(
                reward_id, me, approve=who == "commander", reason="ok", queue_key="lx"
            )

    results = await asyncio.gather(
        approve("commander"), approve("commander2"), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, Reward)]
    losses = [r for r in results if isinstance(r, RewardError)]
    assert len(wins) == 1 and len(losses) == 1, results
    assert losses[0].key in ("reward.already_approved", "reward.already_rejected")
    async with session_factory() as session:
        events = await session.scalar(
            select(func.count())
            .select_from(ReportEvent)
            .where(ReportEvent.action.in_(("reward_approved", "reward_rejected")))
        )
    assert events == 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_concurrent_payouts_leave_one_effect(session_factory, seeded):
    reward_id = await propose(session_factory, seeded)
    await decide(session_factory, seeded, reward_id)
    code = await claim_code(session_factory, reward_id)
    gate = asyncio.Barrier(2)

    async def payout(reference):
        async with session_factory() as session, session.begin():
            rewards = Rewards(session, keyring=KEYRING, settings=SETTINGS)
            me = await officer(session, seeded["officer"])
            await gate.wait()
            return await rewards.pay(me, code, reference, queue_of=queue_of)

    results = await asyncio.gather(payout("REF-1"), payout("REF-2"), return_exceptions=True)
    wins = [r for r in results if isinstance(r, Reward)]
    assert len(wins) == 1, results
    assert all(isinstance(r, RewardError) for r in results if not isinstance(r, Reward))
    async with session_factory() as session:
        paid = await session.get(Reward, reward_id)
        assert paid.status == "paid" and paid.payout_reference == wins[0].payout_reference
        assert (
            await session.scalar(
                select(func.count())
                .select_from(ReportEvent)
                .where(ReportEvent.action == "reward_paid")
            )
            == 1
        )
