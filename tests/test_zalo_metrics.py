"""The Zalo channels in ``/metrics``: every send to the Zalo bot and the Zalo OA counted by
result, and every spend of the OA's refresh token; the names are the ones the deploy/ dashboard
and alerts read. Through the Zalo stand-ins over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from tests.test_metrics_logs import sample
from tests.test_zalo_flows import (  # noqa: F401 - the fixtures
    BotCitizen,
    OACitizen,
    service,
    telegram,
    zalo_bot,
    zalo_oa,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


async def scrape(running) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{running.test_url}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


def change(before: str, after: str, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


async def test_zalo_sends_and_token_refreshes_are_counted(service, zalo_bot, zalo_oa):  # noqa: F811
    before = await scrape(service)
    refreshed_before = zalo_oa.refreshes
    bot_citizen = BotCitizen(service, zalo_bot, "zb-metrics-1")
    assert await bot_citizen.say("xin chào")
    zalo_bot.fail_next("sendMessage")  # a 500, then the answer goes again (bot/answers.py)
    assert await bot_citizen.say("xin chào")
    oa_citizen = OACitizen(service, zalo_oa, "oa-metrics-1")
    assert await oa_citizen.say("xin chào")  # the first send spends the refresh token
    zalo_oa.revoke_access_tokens()  # -216: refreshed, and sent again
    assert await oa_citizen.say("xin chào")
    after = await scrape(service)

    bot_ok = len([c for c in zalo_bot.calls if c.method == "sendMessage" and c.answer.get("ok")])
    assert change(before, after, "tinbao_sends_total", channel="zalo_bot", result="ok") == bot_ok
    assert change(before, after, "tinbao_sends_total", channel="zalo_bot", result="5xx") == 1
    oa_ok = len(zalo_oa.delivered())
    assert change(before, after, "tinbao_sends_total", channel="zalo_oa", result="ok") == oa_ok
    assert change(before, after, "tinbao_sends_total", channel="zalo_oa", result="4xx") == 1
    refreshes = change(before, after, "tinbao_token_refreshes_total", channel="zalo_oa")
    assert refreshes == zalo_oa.refreshes - refreshed_before >= 1
    assert change(before, after, "tinbao_token_refreshes_total", result="failed") == 0
    # No label names a citizen.
    assert "zb-metrics-1" not in after and "oa-metrics-1" not in after
    # What deploy/ reads is what the service exports.
    read = set()
    for path in (DEPLOY / "grafana-dashboard.json", DEPLOY / "alerts.yml"):
        read |= set(re.findall(r"tinbao_[a-z_]+", path.read_text(encoding="utf-8")))
    exported = set(re.findall(r"^# TYPE (tinbao_[a-z_]+)", after, re.MULTILINE))
    exported |= {f"{name}_total" for name in exported} | {f"{name}_bucket" for name in exported}
    assert read and read <= exported, read - exported
