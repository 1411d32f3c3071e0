"""Key rotation and the web channel: a web tipster's inbox and PIN survive the old key's removal.

The web inbox keeps the police's messages sealed in a conversation row keyed by the inbox's
keyed hash (bot/web/inbox.py). ``tinbao keys rotate`` moves that row to the new key's hash,
re-encrypts each sealed message and wraps the PIN hash, so that with the new key alone the
tipster still opens the inbox with code and PIN.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar, web
from PIL import Image
from sqlalchemy import select

from bot.cli import app_runner, build_app
from bot.housekeeping import rotate_keys
from bot.runtime import Service
from bot.web.inbox import WebInbox, inbox_key, read_inbox
from config.settings import Settings
from handlers.events import Reply
from handlers.key_rotation import ENCRYPTED_FIELDS, UnreadableValue, reencrypt_batch
from handlers.media import clean_image
from handlers.officers import Registry
from handlers.report_actions import ReportActions
from handlers.security import PIN_WRAP_PREFIX, Keyring
from storage.db import create_engine, create_session_factory
from storage.models import Conversation, Report
from storage.types import utcnow
from tests.e2e import running_service
from tests.standin import DEFAULT_TOKEN, BotAPIStandIn
from tests.test_web_citizen import TIP
from tests.web_support import DUTY, LX, LX_UNIT, code_and_pin, fill, hidden

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
INBOX_FIELD = next(f for f in ENCRYPTED_FIELDS if f.item is not None)
QUESTION = "Xe máy màu gì, biển số bao nhiêu?"


def _b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


@asynccontextmanager
async def web_service(
    standin: BotAPIStandIn, db_url: str, data_dir: Path, key: bytes
) -> AsyncIterator[tuple[Service, str]]:
    """The whole service under ``key`` (no previous key), with its web app on a free port."""
    queues = data_dir / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        f'units = ["{LX_UNIT}"]\n',
        encoding="utf-8",
    )
    settings = Settings(
        telegram_token=DEFAULT_TOKEN,
        telegram_api_url=standin.base_url,
        telegram_file_url=standin.base_file_url,
        database_url=db_url,
        secret_key=_b64(key),
        data_dir=data_dir,
        polling_timeout=10,
        queues_file=queues,
        duty_chat_id=DUTY,
        admin_telegram_ids=[515151],
        public_url="https://tinbao.example.vn",
        trusted_proxies=["127.0.0.1"],
    )
    async with running_service(settings) as service:
        runner = app_runner(build_app(service))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            yield service, f"http://{host}:{port}"
        finally:
            await runner.cleanup()


async def _inbox_page(http: ClientSession, base_url: str, code: str, pin: str) -> str:
    """The status page after code and PIN, once it shows the question (or after 10 s)."""
    async with http.get(f"{base_url}/status") as r:
        csrf = hidden(await r.text(), "csrf")
    html = ""
    for _ in range(100):
        async with http.post(
            f"{base_url}/status", data={"csrf": csrf, "code": code, "pin": pin}
        ) as r:
            html = await r.text()
        if QUESTION in html:
            break
        await asyncio.sleep(0.1)
    return html


async def test_after_rotation_and_the_old_keys_removal_a_web_tipster_still_reads_the_inbox(
    db_url: str, engine: object, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 30, 200)).save(buffer, format="JPEG")
    photo = clean_image(buffer.getvalue())
    async with BotAPIStandIn() as standin:
        async with (
            web_service(standin, db_url, tmp_path, OLD) as (service, base_url),
            ClientSession(cookie_jar=CookieJar(unsafe=True)) as http,
        ):
            _, html = await fill(http, base_url, "/tip", TIP)
            code, pin = code_and_pin(html)
            await standin.wait_for(lambda c: c.chat_id == LX.id and code in str(c.params), 10)
            async with service.session_factory() as session, session.begin():
                report = await session.scalar(
                    select(Report).where(Report.code == code.replace("-", ""))
                )
                officer = await Registry(session).by_telegram(515151)
                assert report is not None and officer is not None
                await ReportActions(session, officer, service.triage).ask(report, QUESTION, photo)
            assert service.messenger is not None
            service.messenger.kick()
            assert QUESTION in await _inbox_page(http, base_url, code, pin)

        factory = create_session_factory(create_engine(db_url))
        result = await rotate_keys(factory, Keyring(NEW, [OLD]), batch=1)
        assert result.reencrypted[INBOX_FIELD.name] == 1
        assert result.pins_rewrapped == 1 and result.routes_rehashed == 1
        again = await rotate_keys(factory, Keyring(NEW, [OLD]))
        assert again.reencrypted[INBOX_FIELD.name] == 0 and again.pins_rewrapped == 0
        async with factory() as session:
            stored = await session.scalar(select(Report.pin_hash))
            rows = (await session.scalars(select(Conversation))).all()
        assert stored is not None and stored.startswith(PIN_WRAP_PREFIX)
        inboxes = [row for row in rows if (row.data or {}).get("inbox")]
        assert len(inboxes) == 1
        assert all(Keyring(NEW).is_current(item["m"]) for item in inboxes[0].data["inbox"])

        # The old key is gone from the configuration.
        async with (
            web_service(standin, db_url, tmp_path, NEW) as (service, base_url),
            ClientSession(cookie_jar=CookieJar(unsafe=True)) as http,
        ):
            html = await _inbox_page(http, base_url, code, pin)
            assert QUESTION in html, html[:3000]
            found = re.search(r'<img class="photo" src="([^"]+)"', html)
            assert found, html[:3000]
            async with http.get(f"{base_url}{found.group(1)}") as r:
                assert r.status == 200 and await r.read() == photo.content
            async with http.get(f"{base_url}/status") as r:
                csrf = hidden(await r.text(), "csrf")
            data = {"csrf": csrf, "code": code, "pin": "000000" if pin != "000000" else "111111"}
            async with http.post(f"{base_url}/status", data=data) as r:
                assert QUESTION not in await r.text()  # a wrong PIN still opens nothing


async def test_an_inbox_written_during_the_rotation_is_merged_moved_and_resealed(
    session_factory,
) -> None:
    """Messages sealed under the old key, one written after the switch (under the new key's
    hash), an interrupted rotation run again: the inbox reads whole, in order, with the new key
    alone."""
    inbox_id = "inbox-under-rotation"
    old, rotating, new = Keyring(OLD), Keyring(NEW, [OLD]), Keyring(NEW)
    base = utcnow()
    clock = iter((base, base + timedelta(seconds=3)))
    before = WebInbox(session_factory, old, clock=lambda: next(clock))
    await before.send(inbox_id, [Reply("một"), Reply("hai")])
    # A row already under the new key's hash, as a process of the old code would have made it.
    sealed = new.encrypt({"text": "x"})
    async with session_factory() as session, session.begin():
        session.add(
            Conversation(
                key=inbox_key(new, inbox_id),
                state="web_inbox",
                data={"inbox": [{"at": (base + timedelta(seconds=2)).isoformat(), "m": sealed}]},
            )
        )
    async with session_factory() as session:
        assert [m.text for m in await read_inbox(session, rotating, inbox_id)] == [
            "một",
            "hai",
            "x",
        ]
    # After the switch, the next message moves the inbox to the new key's hash.
    await WebInbox(session_factory, rotating, clock=lambda: next(clock)).send(
        inbox_id, [Reply("ba")]
    )
    async with session_factory() as session:
        assert await session.get(Conversation, inbox_key(old, inbox_id)) is None
    # The rotation dies after its first batch of one row, and is run again.
    async with session_factory() as session, session.begin():
        _, changed, _ = await reencrypt_batch(session, rotating, INBOX_FIELD, None, batch=1)
    assert changed == 2  # the two sealed under the old key
    result = await rotate_keys(session_factory, rotating)
    assert result.reencrypted[INBOX_FIELD.name] == 0
    async with session_factory() as session:
        texts = [m.text for m in await read_inbox(session, new, inbox_id)]
        row = await session.get(Conversation, inbox_key(new, inbox_id))
    assert texts == ["một", "hai", "x", "ba"]
    assert row is not None and all(new.is_current(i["m"]) for i in row.data["inbox"])


async def test_more_previous_keys_than_a_pin_hash_carries_are_refused(session_factory) -> None:
    keys = [bytes([n]) * 32 for n in (7, 8, 9)]
    with pytest.raises(UnreadableValue, match="more than 2 keys"):
        await rotate_keys(session_factory, Keyring(NEW, keys))
