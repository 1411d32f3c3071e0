"""The reward claim code on the citizens' status page (issue 11): a web tipster whose reward is
approved sees the one-time claim code behind their code and PIN, as the chat's ``/status`` shows
it (``tests/test_rewards_chat.py::test_the_status_check_shows_the_reward``); the code pays out
once, and afterwards the page says the reward was paid. Officers act through the panel, over
HTTP, on the same server."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import ClientSession, CookieJar
from sqlalchemy import select

from admin.auth import hash_password
from bot.runtime import Service
from handlers.i18n import t
from storage.models import Officer, OfficerScope, Reward
from tests.standin import BotAPIStandIn
from tests.web_support import (
    LX,
    base_url_fixture,  # noqa: F401 - fixture
    code_and_pin,
    fill,
    hidden,
    service_fixture,  # noqa: F401 - fixture
    standin_fixture,  # noqa: F401 - fixture
)

PASSWORD = "correct horse battery staple"
CLAIM = re.compile(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}")
TIP = {
    "category": "theft",
    "place_q": "long xuyen",
    "occurred": "today",
    "description": "Trộm xe máy ở bãi giữ xe chợ Long Xuyên, hai người đi xe không biển số",
}


async def add_account(service: Service, username: str, role: str, queue: str) -> None:
    async with service.session_factory() as db, db.begin():
        db.add(
            Officer(
                display_name=username,
                role=role,
                username=username,
                password_hash=hash_password(PASSWORD),
                scopes=[OfficerScope(queue_key=queue)],
            )
        )


class Panel:
    """One officer signed in to the panel, in their own browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = ClientSession(cookie_jar=CookieJar(unsafe=True))

    async def csrf(self, path: str) -> str:
        async with self.http.get(f"{self.base}{path}") as r:
            return hidden(await r.text(), "csrf")

    async def login(self, username: str) -> None:
        token = await self.csrf("/admin/login")
        data = {"username": username, "password": PASSWORD, "csrf": token}
        async with self.http.post(
            f"{self.base}/admin/login", data=data, allow_redirects=False
        ) as r:
            assert r.status == 303, await r.text()

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str]:
        token = await self.csrf("/admin/")
        async with self.http.post(
            f"{self.base}{path}", data={**data, "csrf": token}, allow_redirects=False
        ) as r:
            return r.status, await r.text()

    async def close(self) -> None:
        await self.http.close()


async def status_page(http: ClientSession, base: str, code: str, pin: str) -> str:
    async with http.get(f"{base}/status") as r:
        csrf = hidden(await r.text(), "csrf")
    data = {"csrf": csrf, "code": code, "pin": pin, "lang": "vi"}
    async with http.post(f"{base}/status", data=data) as r:
        html = await r.text()
        assert r.status == 200 and 'id="status-line"' in html, html[:2000]
        return html


def reward_line(html: str) -> str | None:
    found = re.search(r'<p class="reward" id="reward">(.*?)</p>', html, re.S)
    return found.group(1) if found else None


@pytest.mark.parametrize("contact", ["none", "relay"])
async def test_an_approved_reward_shows_its_claim_code_once_behind_the_pin(
    base_url: str, service: Service, standin: BotAPIStandIn, contact: str
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as citizen:
        status, html = await fill(citizen, base_url, "/tip", {**TIP, "contact": contact})
        assert status == 200, html[:2000]
        code, pin = code_and_pin(html)
        await standin.wait_for(lambda c: c.chat_id == LX.id and code in str(c.params), timeout=10)
        # No reward yet: no reward line, no claim code.
        html = await status_page(citizen, base_url, code, pin)
        assert reward_line(html) is None and not CLAIM.search(html)

        await add_account(service, "lan", "officer", "long-xuyen")
        await add_account(service, "boss", "commander", "*")
        officer, commander = Panel(base_url), Panel(base_url)
        try:
            await officer.login("lan")
            report_path = f"/admin/reports/{code}"
            form = {"outcome": "clarified", "subjects": "1", "arrest": "0"}
            assert (await officer.post(f"{report_path}/resolve", form))[0] == 303
            form = {"amount": "2.000.000", "reason": "Thông tin chính xác, bắt quả tang"}
            assert (await officer.post(f"{report_path}/reward", form))[0] == 303
            async with service.session_factory() as db:
                reward = await db.scalar(select(Reward))
                assert reward is not None and reward.status == "proposed"
                reward_id = reward.id
            # Proposed but not approved: still nothing for the tipster.
            html = await status_page(citizen, base_url, code, pin)
            assert reward_line(html) is None and not CLAIM.search(html)

            await commander.login("boss")
            decide = f"/admin/rewards/{reward_id}/decide"
            status, _ = await commander.post(decide, {"decision": "approve", "reason": "Đồng ý"})
            assert status == 303

            # Approved: the status page shows the amount and one claim code, in Vietnamese.
            html = await status_page(citizen, base_url, code, pin)
            if contact == "relay":
                # The approval's message reaches the anonymous inbox too, without a code of
                # its own (it would be a stale one beside the page's fresh code).
                told = t(
                    "vi",
                    "reward.citizen.approved_on_page",
                    code=code,
                    amount="2.000.000 ₫",
                    instructions=t("vi", "reward.citizen.default_instructions"),
                )
                async with asyncio.timeout(20):
                    while told not in html:
                        await asyncio.sleep(0.1)
                        html = await status_page(citizen, base_url, code, pin)
            line = reward_line(html)
            assert line is not None, html[:3000]
            assert "2.000.000 ₫" in line and code in line
            claims = CLAIM.findall(html)
            assert len(claims) == 1, claims
            assert t("vi", "reward.citizen.default_instructions") in line
            # The database holds only its keyed hash.
            async with service.session_factory() as db:
                stored = await db.scalar(select(Reward))
                assert stored is not None and stored.claim_hash
                assert claims[0] not in stored.claim_hash
                assert claims[0].replace("-", "") not in stored.claim_hash

            # A later check issues a new code, and the one shown before stops working:
            # only the code the tipster holds last is good, as in the chat.
            html = await status_page(citizen, base_url, code, pin)
            newer = CLAIM.findall(html)
            assert len(newer) == 1 and newer[0] != claims[0]
            form = {"claim": claims[0], "reference": "PC-0001"}
            status, page = await officer.post("/admin/rewards/pay", form)
            assert status == 409 and t("vi", "reward.wrong_code") in page

            # The code pays out once.
            form = {"claim": newer[0].lower(), "reference": "PC-0001"}
            assert (await officer.post("/admin/rewards/pay", form))[0] == 303
            form = {"claim": newer[0], "reference": "PC-0002"}
            status, page = await officer.post("/admin/rewards/pay", form)
            assert status == 409 and t("vi", "reward.wrong_code") in page
            async with service.session_factory() as db:
                paid = await db.scalar(select(Reward))
                assert paid is not None and paid.status == "paid"
                assert paid.payout_reference == "PC-0001" and paid.claim_hash is None
        finally:
            await officer.close()
            await commander.close()

        # Paid: the page says so, and shows no claim code any more.
        html = await status_page(citizen, base_url, code, pin)
        line = reward_line(html)
        assert line == t("vi", "reward.citizen.paid", amount="2.000.000 ₫")
        assert not CLAIM.search(html)
        # In English too, when the tipster asks for it.
        async with citizen.get(f"{base_url}/status/report?lang=en") as r:
            html = await r.text()
        assert reward_line(html) == t("en", "reward.citizen.paid", amount="2.000.000 ₫")
