"""A pressed button is echoed once, with one tick, even when its label already shows one."""

from __future__ import annotations

import pytest

from handlers.i18n import t
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory


@pytest.fixture
async def standin():
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture
async def service(standin, db_url, engine, tmp_path):
    async with running_service(service_settings(standin, db_url, tmp_path)) as running:
        yield running


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_chosen_contact_mode_is_echoed_with_one_tick(standin, service):
    factory = UpdateFactory(standin)
    chat = Chat(standin, factory, service, factory.vi_user)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say(t("vi", "place.dont_know"))
    await chat.press(t("vi", "when.today"))
    await chat.say("Kẻ gian trộm xe máy trước chợ Long Xuyên")
    calls = await chat.press(t("vi", "ev.skip"))
    # The current mode (anonymous chat) is marked on its button.
    marked = t("vi", "contact.relay", mark="✓ ")
    assert marked.startswith("✓ ")
    calls = await chat.press(marked)
    edits = [c.text or "" for c in calls if c.method == "editMessageText"]
    assert edits, [c.method for c in calls]
    assert edits[0].startswith(f"✓ {t('vi', 'contact.relay', mark='')}\n"), edits[0]
    assert not edits[0].startswith("✓ ✓")
