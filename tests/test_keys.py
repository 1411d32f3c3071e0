"""Key rotation on both databases: the relay still reaches the tipster, resume, wrong keys."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.channel import ChannelRegistry
from bot.cli import main
from bot.delivery import CitizenMessenger
from bot.dispatch import Dispatcher
from bot.housekeeping import rotate_keys
from bot.telegram_citizen import TelegramCitizenSender
from config.settings import ConfigError, Settings, resolve_previous_keys
from handlers.key_rotation import ENCRYPTED_FIELDS, UnreadableValue, reencrypt_batch
from handlers.security import Keyring
from storage.db import create_engine, create_session_factory
from storage.migrate import upgrade
from storage.models import AuditEvent, ContactRoute, Conversation, OutboxMessage, Report
from storage.repositories import Outbox
from tests.driver import TEST_KEY, citizen, label, make_flow, sync_units
from tests.standin import BotAPIStandIn

OLD = TEST_KEY
NEW = bytes(range(100, 132))
WRONG = bytes(range(200, 232))
TIPSTER = 4242


async def _file_tip(session_factory, user_id: int = TIPSTER) -> Report:
    """A tip with the anonymous relay, filed under the old key."""
    c = citizen(session_factory, user_id)
    await c.command("start")
    await c.press(label("vi", "menu.tip"))
    await c.press(label("vi", "cat.drugs"))
    await c.say("long xuyen")
    await c.press("Phường Long Xuyên")
    await c.press(label("vi", "when.today"))
    await c.say("Có người bán ma túy ở quán nước đầu hẻm")
    await c.press(label("vi", "ev.skip"))
    await c.press(label("vi", "contact.relay", mark="✓ "))
    await c.press(label("vi", "summary.confirm"))
    async with session_factory() as session:
        report = (await session.scalars(select(Report).order_by(Report.id.desc()))).first()
        assert report is not None
        return report


async def _claim_message(session_factory, report: Report, keyring: Keyring) -> None:
    """A reward's claim code waiting in the outbox, encrypted as triage writes it."""
    async with session_factory() as session, session.begin():
        Outbox(session).enqueue(
            kind="citizen_message",
            destination=f"report:{report.id}",
            payload={
                "key": "reward.citizen.approved",
                "values": {"amount": "500.000 ₫", "instructions": "Đến công an phường."},
                "secret": keyring.encrypt({"claim": "CLAIM-7777"}),
            },
            report_id=report.id,
        )


async def _tokens(session_factory) -> list[str]:
    async with session_factory() as session:
        routes = (await session.scalars(select(ContactRoute.route))).all()
        secrets_ = [
            row.payload["secret"]
            for row in (await session.scalars(select(OutboxMessage))).all()
            if "secret" in (row.payload or {})
        ]
        return [*routes, *secrets_]


async def test_after_rotation_the_relay_still_reaches_the_tipster(session_factory):
    await sync_units(session_factory)
    report = await _file_tip(session_factory)
    await _claim_message(session_factory, report, Keyring(OLD))
    # Another citizen is half-way through a tip when the key changes.
    other = citizen(session_factory, 777)
    await other.command("start")
    await other.press(label("vi", "menu.tip"))

    rotating = Keyring(NEW, [OLD])
    result = await rotate_keys(session_factory, rotating, batch=1)
    assert result.reencrypted["contact_routes.route"] == 1
    assert result.reencrypted["outbox.payload.secret"] == 1
    assert result.routes_rehashed == 1

    # The old key is gone from the configuration: everything is read with the new one alone.
    fresh = Keyring(NEW)
    assert all(fresh.is_current(token) for token in await _tokens(session_factory))
    async with session_factory() as session:
        route = await session.scalar(select(ContactRoute))
        assert route is not None
        assert route.sender_key == fresh.sender_key("telegram", str(TIPSTER))
        audit = await session.scalar(select(AuditEvent).where(AuditEvent.action == "keys_rotated"))
        assert audit is not None and audit.data["routes_rehashed"] == 1
    async with BotAPIStandIn() as standin, standin.bot() as bot:
        channels = ChannelRegistry()
        channels.add(TelegramCitizenSender(bot))  # type: ignore[arg-type]
        messenger = CitizenMessenger(session_factory, channels, fresh, per_second=1000)
        assert await messenger.run_once() == 1
        texts = standin.texts_to(TIPSTER)
        assert len(texts) == 1 and "CLAIM-7777" in texts[0]

    # The half-written draft moves to the new key on its next message, still at its step.
    flow = make_flow()
    flow.keyring = rotating
    other.dispatcher = Dispatcher(session_factory, flow)
    async with session_factory() as session:
        before = await session.get(Conversation, Keyring(OLD).sender_key("telegram", "777"))
        assert before is not None
        state = before.state
    await other.press(label("vi", "cat.drugs"))
    async with session_factory() as session:
        assert await session.get(Conversation, Keyring(OLD).sender_key("telegram", "777")) is None
        moved = await session.get(Conversation, fresh.sender_key("telegram", "777"))
        assert moved is not None and moved.state != state != "idle"


async def test_an_interrupted_rotation_resumes(session_factory):
    await sync_units(session_factory)
    reports = [await _file_tip(session_factory, user_id) for user_id in (11, 12, 13)]
    rotating = Keyring(NEW, [OLD])
    routes = next(f for f in ENCRYPTED_FIELDS if f.name == "contact_routes.route")
    # The first batch of one row was committed; then the process died.
    async with session_factory() as session, session.begin():
        _, changed, more = await reencrypt_batch(session, rotating, routes, None, batch=1)
    assert (changed, more) == (1, True)
    result = await rotate_keys(session_factory, rotating, batch=2)
    assert result.pending["contact_routes.route"] == 2
    assert result.reencrypted["contact_routes.route"] == 2
    assert all(Keyring(NEW).is_current(t) for t in await _tokens(session_factory))
    # Once more: nothing left to do.
    again = await rotate_keys(session_factory, rotating)
    assert set(again.reencrypted.values()) == {0} and again.routes_rehashed == 0
    assert len(reports) == 3


async def test_a_wrong_previous_key_is_refused_and_nothing_changes(session_factory):
    await sync_units(session_factory)
    await _file_tip(session_factory)
    before = await _tokens(session_factory)
    with pytest.raises(UnreadableValue, match="TINBAO_PREVIOUS_SECRET_KEYS"):
        await rotate_keys(session_factory, Keyring(NEW, [WRONG]))
    assert await _tokens(session_factory) == before


def _b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def test_previous_keys_setting_is_checked():
    settings = Settings(
        _env_file=None,
        previous_secret_keys=f"{_b64(OLD)}, {_b64(WRONG)}",
    )
    assert resolve_previous_keys(settings, NEW) == [OLD, WRONG]
    with pytest.raises(ConfigError, match="same as TINBAO_SECRET_KEY"):
        resolve_previous_keys(settings, OLD)
    broken = Settings(_env_file=None, previous_secret_keys="abc")
    with pytest.raises(ConfigError, match=r"TINBAO_PREVIOUS_SECRET_KEYS \(key 1\) is malformed"):
        resolve_previous_keys(broken, NEW)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_refuses_a_wrong_previous_key_with_a_clear_message(
    db_url, tmp_path: Path, monkeypatch, capsys
):
    async def seed() -> None:
        engine = create_engine(db_url)
        try:
            await upgrade(engine)
            factory = create_session_factory(engine)
            await sync_units(factory)
            await _file_tip(factory)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINBAO_DATABASE_URL", db_url)
    monkeypatch.setenv("TINBAO_SECRET_KEY", _b64(NEW))
    monkeypatch.setenv("TINBAO_PREVIOUS_SECRET_KEYS", _b64(WRONG))
    assert main(["keys", "rotate"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "Nothing was changed" in err
    monkeypatch.setenv("TINBAO_PREVIOUS_SECRET_KEYS", f"{_b64(WRONG)},{_b64(OLD)}")
    assert main(["keys", "rotate"]) == 0
    assert "contact_routes.route: 1 re-encrypted" in capsys.readouterr().out
    monkeypatch.delenv("TINBAO_PREVIOUS_SECRET_KEYS")
    assert main(["keys", "rotate"]) == 2
    assert "TINBAO_PREVIOUS_SECRET_KEYS is empty" in capsys.readouterr().err
