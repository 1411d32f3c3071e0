"""The spool (bot/spool.py) and the patient answer (bot/answers.py)."""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest

from bot.outage import DatabaseDown, DatabaseWatch
from bot.spool import Spool, SpoolError, SpoolIntake
from handlers.i18n import t
from handlers.security import Keyring
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory

KEY = bytes(range(32))


def keyring() -> Keyring:
    return Keyring(KEY)


def update(chat: int, n: int) -> dict[str, object]:
    return {"update_id": n, "message": {"chat": {"id": chat}, "text": f"secret {chat}/{n}"}}


async def test_updates_are_written_encrypted_private_and_replayed_after_a_restart(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, keyring())
    first = await spool.append("telegram", update(424242, 1))
    await spool.append("zalo_bot", update(424243, 2))
    [path] = list(directory.glob("spool-*.log"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    raw = path.read_bytes()
    assert b"424242" not in raw and b"secret" not in raw  # the citizen's ids are encrypted
    spool.ack(first.seq)
    with path.open("ab") as handle:  # a crash in the middle of a write
        handle.write(b"R 99 telegram gAAAA")

    again = Spool(directory, keyring())
    again.load()
    assert [(r.channel, r.data) for r in again.pending()] == [("zalo_bot", update(424243, 2))]
    later = await again.append("telegram", update(424242, 3))
    assert later.seq > again.pending()[0].seq  # order survives the restart
    for record in again.pending():
        again.ack(record.seq)
    assert not list(directory.glob("spool-*"))  # nothing waits: the file is gone


async def test_a_spool_that_cannot_be_written_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "spool"
    blocker.mkdir(mode=0o700)
    spool = Spool(blocker, keyring())
    spool.load()
    blocker.chmod(0o500)
    try:
        (blocker / "probe").touch()
    except PermissionError:
        pass
    else:  # root ignores directory modes: make the file name a directory instead
        (blocker / "probe").unlink()
        blocker.chmod(0o700)
        from storage.types import utcnow

        (blocker / f"spool-{utcnow():%Y%m%d}.log").mkdir()
    with pytest.raises(SpoolError):
        await spool.append("telegram", update(1, 1))
    assert spool.failures == 1
    blocker.chmod(0o700)


async def test_an_outage_holds_a_chat_and_replays_it_in_order(tmp_path: Path) -> None:
    up = True

    async def probe() -> bool:
        return up

    watch = DatabaseWatch(probe=probe)
    intake = SpoolIntake(Spool(tmp_path / "spool", keyring()), watch)
    handled: list[int] = []

    async def handler(data: dict[str, object]) -> bool:
        if not up:
            await watch.failed(None)
            raise DatabaseDown("down")
        handled.append(int(str(data["update_id"])))
        return True

    def chat_key(data: dict[str, object]) -> str:
        message = data["message"]
        assert isinstance(message, dict)
        return str(message["chat"]["id"])

    intake.register("telegram", handler, chat_key)
    intake.start()
    try:
        await intake.submit("telegram", update(1, 1))
        await intake.drained(5)
        up = False
        for n in (2, 3, 4):
            await intake.submit("telegram", update(1 if n != 3 else 2, n))
        await asyncio.sleep(0.3)
        assert handled == [1] and intake.size() == 3 and watch.down
        up = True
        await watch.check()
        await intake.drained(5)
        assert handled[0] == 1 and sorted(handled) == [1, 2, 3, 4]
        assert handled.index(2) < handled.index(4)  # chat 1 in its order
    finally:
        await intake.stop()


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


async def test_an_answer_meeting_429_and_502_is_sent_anyway(
    standin: BotAPIStandIn, db_url: str, engine: object, tmp_path: Path, caplog
) -> None:
    settings = service_settings(standin, db_url, tmp_path)
    async with running_service(settings) as service:
        factory = UpdateFactory(standin)
        chat = Chat(standin, factory, service, factory.new_user(user_id=770001))
        standin.fail_next("sendMessage", 429, retry_after=1, chat_id=770001)
        standin.fail_next("sendMessage", 502, count=2, chat_id=770001)
        with caplog.at_level(logging.INFO):
            await chat.command("start")
        sent = [c for c in standin.calls if c.method == "sendMessage" and c.chat_id == 770001]
        assert [c.error_code for c in sent[:4]] == [429, 502, 502, None]
        assert t("vi", "err.internal") not in (sent[-1].text or "")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
