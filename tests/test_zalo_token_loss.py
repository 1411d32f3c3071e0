# ruff: noqa: F811 - the stand-in fixtures are imported from the flow tests
"""A crash between Zalo's answer to a token refresh and the save of the new pair.

Zalo's refresh token is single-use: once Zalo has answered, the old one is spent, and if the new
pair is not saved tinbao holds no valid refresh token any more. That must be reported loudly
(bot/zalo/oa_tokens.py) and shown by ``/healthz`` as "token refresh failing". Here the save
fails for real: the database refuses the update of the stored tokens (a trigger, as a full disk
or a read-only volume would), on SQLite and PostgreSQL, with the Zalo OA stand-in answering the
refresh over HTTP. The citizen's answer is not lost meanwhile (it waits in the outbox), and
what the report tells the operator to do (authorise again, set the new refresh token) works.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.i18n import t
from handlers.outbox import Kind
from storage.models import OutboxMessage, ZaloToken
from tests.test_zalo_flows import (  # noqa: F401 (fixtures)
    OACitizen,
    flow_settings,
    served,
    telegram,
    until,
    zalo_bot,
    zalo_oa,
)

SQLITE_REFUSAL = """
CREATE TRIGGER zalo_tokens_refused BEFORE UPDATE OF tokens ON zalo_tokens
BEGIN SELECT RAISE(ABORT, 'disk full'); END
"""
POSTGRES_REFUSAL = (
    """
    CREATE FUNCTION zalo_tokens_refused() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'disk full'; END $$
    """,
    """
    CREATE TRIGGER zalo_tokens_refused BEFORE UPDATE OF tokens ON zalo_tokens
    FOR EACH ROW EXECUTE FUNCTION zalo_tokens_refused()
    """,
)


async def refuse_token_saves(engine: AsyncEngine) -> None:
    """From now on the database refuses to store new tokens (the row stays as it is)."""
    statements = (SQLITE_REFUSAL,) if engine.dialect.name == "sqlite" else POSTGRES_REFUSAL
    async with engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def allow_token_saves(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "DROP TRIGGER zalo_tokens_refused"
                + ("" if engine.dialect.name == "sqlite" else " ON zalo_tokens")
            )
        )


async def health(service) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{service.test_url}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_new_tokens_that_cannot_be_saved_are_reported_loudly_and_on_healthz(
    telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path, caplog
):
    caplog.set_level(logging.INFO)
    settings = flow_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path)
    citizen_id = "8100000000000000401"
    async with served(settings) as service:
        citizen = OACitizen(service, zalo_oa, citizen_id)
        assert (await citizen.say("/start")).startswith(t("vi", "greet.intro"))
        assert zalo_oa.refreshes == 1
        status, body = await health(service)
        assert status == 200 and body["channels"]["zalo_oa"] == "running: webhook"

        await refuse_token_saves(engine)
        zalo_oa.revoke_access_tokens()  # the next send meets -216 and refreshes
        await citizen.event("user_send_text", {"text": "/help"})
        assert zalo_oa.refreshes == 2  # Zalo answered: the refresh token in the database is spent
        lost = [
            r
            for r in caplog.records
            if r.name == "bot.zalo.oa_tokens" and r.levelno == logging.CRITICAL
        ]
        assert len(lost) == 1
        message = lost[0].getMessage()
        assert "could not be saved" in message and "TINBAO_ZALO_OA_REFRESH_TOKEN" in message
        for token in (*zalo_oa.refresh_tokens, *zalo_oa.access_tokens):
            assert token not in caplog.text  # loud, but no secret in it

        status, body = await health(service)
        assert body["channels"]["zalo_oa"].startswith("failing: token refresh failing")
        assert "could not be saved" in body["channels"]["zalo_oa"]
        async with service.session_factory() as session:
            row = await session.scalar(select(ZaloToken))
            assert row is not None and service.keyring is not None
            stored = service.keyring.decrypt(row.tokens)
        assert stored["refresh_token"] not in zalo_oa.refresh_tokens  # spent, and nothing newer
        # The citizen's update was handled; its answer is not dropped but waits to be sent.
        assert not [r for r in caplog.records if "dropped" in r.getMessage()]
        async with service.session_factory() as session:
            waiting = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.kind == Kind.CITIZEN_ANSWER.value)
                )
            ).all()
            assert len(waiting) == 1 and waiting[0].status in ("pending", "sending")

        # It stays failing (Zalo refuses the spent token) until the operator acts.
        await citizen.event("user_send_text", {"text": "/help"})
        status, body = await health(service)
        assert body["channels"]["zalo_oa"].startswith("failing: token refresh failing")

    # The operator authorises the app again and sets the new refresh token, as the report says;
    # the disk has room again.
    await allow_token_saves(engine)
    zalo_oa.refresh_tokens.add("refresh-reauthorised")
    renewed = settings.model_copy(
        update={"zalo_oa_refresh_token": SecretStr("refresh-reauthorised")}
    )
    async with served(renewed) as service:
        status, body = await health(service)
        assert body["channels"]["zalo_oa"] == "running: webhook"
        assert "refresh-reauthorised" not in zalo_oa.refresh_tokens  # spent for a new pair
        answers = t("vi", "help.text")[:20]
        await until(lambda: _now(sum(answers in m for m in zalo_oa.delivered(citizen_id)) == 2))


async def _now(value: bool) -> bool:
    return value


async def test_a_first_refresh_that_cannot_be_saved_leaves_the_service_running(
    telegram, zalo_bot, zalo_oa, db_url, engine, tmp_path: Path, caplog
):
    """At start: the OA channel says why it fails; the rest of the service runs."""
    await refuse_token_saves(engine)
    settings = flow_settings(telegram, zalo_bot, zalo_oa, db_url, tmp_path)
    async with served(settings) as service:
        assert zalo_oa.refreshes == 1
        assert [r for r in caplog.records if r.levelno == logging.CRITICAL]
        status, body = await health(service)
        assert status == 200  # the database answers; one channel fails
        assert body["channels"]["zalo_oa"] == (
            "failing: token refresh failing: new tokens could not be saved"
        )
        assert body["channels"]["zalo_bot"].startswith("running")
