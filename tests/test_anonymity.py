"""After 20 tips from different people, nothing stored or logged can name any of them."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select, text

from handlers.i18n import t
from storage.models import Base, Report
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

USERS = 20


async def dump_everything(session_factory) -> str:
    """Every row of every table (and the schema version), as text."""
    parts: list[str] = []
    async with session_factory() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        parts.append(bytes(value).decode("latin-1"))
                    else:
                        parts.append(repr(value))
        parts += [repr(r) for r in (await session.execute(text("SELECT * FROM alembic_version")))]
    return "\n".join(parts)


async def test_no_tipster_identity_in_the_database_or_the_logs(db_url, engine, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with BotAPIStandIn() as standin:
        factory = UpdateFactory(standin)
        users = [
            factory.new_user(
                first_name=f"Thị Mộng{i:02d}",
                last_name=f"Huỳnh{i:02d}",
                username=f"mong_huynh_{i:02d}",
                language_code="vi" if i % 2 else "en",
                user_id=987_650_000 + i * 7919,
            )
            for i in range(USERS)
        ]
        settings = service_settings(standin, db_url, tmp_path)
        async with running_service(settings) as service:
            for i, user in enumerate(users):
                locale = user.language_code or "vi"
                chat = Chat(standin, factory, service, user)
                await chat.command("start")
                await chat.press(t(locale, "menu.tip"))
                await chat.press(t(locale, "cat.drugs"))
                await chat.say("chau doc")
                await chat.press("Phường Châu Đốc")
                await chat.press(t(locale, "when.today"))
                await chat.say(f"Mua bán trái phép chất ma túy, lần {i}")
                await chat.send(factory.photo(user))
                await chat.press(t(locale, "ev.done"))
                mode = ("relay", "none", "phone")[i % 3]
                await chat.press(
                    t(locale, f"contact.{mode}", mark="✓ " if mode == "relay" else "")
                )
                if mode == "phone":
                    # A phone the tipster chose to leave is the one allowed exception; it is
                    # stored encrypted all the same.
                    await chat.send(factory.contact(user, f"+8491{i:07d}"))
                await chat.press(t(locale, "summary.confirm"))
            assert not standin.calls_for("forwardMessage")
            dump = await dump_everything(service.session_factory)
            async with service.session_factory() as session:
                reports = (await session.scalars(select(Report))).all()
    assert len(reports) == USERS
    logs = caplog.text
    assert logs  # the service did log; the point is what it did not log
    for user in users:
        for needle in (str(user.id), user.username, user.first_name, user.last_name):
            assert needle
            assert needle not in dump, f"{needle!r} is stored"
            assert needle not in logs, f"{needle!r} is logged"
    for i in range(USERS):
        assert f"8491{i:07d}" not in dump


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_bot_token_is_scrubbed_from_logs(db_url, engine, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with BotAPIStandIn() as standin:
        settings = service_settings(standin, db_url, tmp_path)
        assert settings.telegram_token is not None
        token = settings.telegram_token.get_secret_value()
        async with running_service(settings):
            logging.getLogger("tinbao.test").warning("url %s", f"{standin.base_url}{token}/getMe")
    assert "[redacted]" in caplog.text
    assert token not in caplog.text
