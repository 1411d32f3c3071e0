"""``/metrics`` (names present, counting), JSON logs without identifiers, roles, and the lock
that refuses a second polling process."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from admin.web import build_web_app
from bot.logs import RATE_LIMIT, SCRUBBER, JsonFormatter
from bot.roles import Role
from bot.runtime import Service
from config.settings import ConfigError
from tests.e2e import Chat, running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import UpdateFactory
from tests.test_telegram import file_tip

METRIC_NAMES = (
    "tinbao_updates_total",
    "tinbao_answer_latency_seconds_bucket",
    "tinbao_reports_total",
    "tinbao_outbox_backlog",
    "tinbao_outbox_oldest_age_seconds",
    "tinbao_sends_total",
    "tinbao_escalations_total",
    "tinbao_timer_lag_seconds",
    "tinbao_spool_size",
    "tinbao_token_refreshes_total",
    "tinbao_database_errors_total",
    "tinbao_database_up",
    "tinbao_malformed_updates_total",
)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus's text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return 0.0


async def test_metrics_are_named_and_count(db_url, engine, tmp_path):
    async with BotAPIStandIn() as standin:
        factory = UpdateFactory(standin)
        settings = service_settings(standin, db_url, tmp_path, duty_chat_id=-100777)
        async with running_service(settings) as service:
            app = build_web_app(service)
            async with TestClient(TestServer(app)) as client:
                before = await (await client.get("/metrics")).text()
                user = factory.new_user(language_code="vi")
                await file_tip(Chat(standin, factory, service, user), "vi", "Trộm xe máy ở chợ")
                response = await client.get("/metrics")
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                after = await response.text()
    for name in METRIC_NAMES:
        assert name in after, name
    tip = {"kind": "tip"}
    assert (
        sample(after, "tinbao_reports_total", **tip)
        == sample(before, "tinbao_reports_total", **tip) + 1
    )
    updates = sample(after, "tinbao_updates_total", channel="telegram", kind="press")
    assert updates - sample(before, "tinbao_updates_total", channel="telegram", kind="press") == 7
    assert sample(after, "tinbao_updates_total", channel="telegram", kind="message") >= 3
    assert sample(after, "tinbao_sends_total", channel="telegram", result="ok") > sample(
        before, "tinbao_sends_total", channel="telegram", result="ok"
    )
    assert sample(after, "tinbao_answer_latency_seconds_count") >= 10
    assert sample(after, "tinbao_database_up") == 1
    # Nothing in the labels names a person.
    assert str(user.id) not in after


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_metrics_can_be_limited_to_addresses(db_url, engine, tmp_path):
    async with BotAPIStandIn() as standin:
        settings = service_settings(standin, db_url, tmp_path, metrics_allow="10.0.0.0/8")
        async with (
            running_service(settings) as service,
            TestClient(TestServer(build_web_app(service))) as client,
        ):
            assert (await client.get("/metrics")).status == 403
        settings = service_settings(standin, db_url, tmp_path, metrics_allow="127.0.0.1, ::1")
        async with (
            running_service(settings) as service,
            TestClient(TestServer(build_web_app(service))) as client,
        ):
            assert (await client.get("/metrics")).status == 200


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """A root handler writing JSON lines, behind the scrubber and the rate limit."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SCRUBBER)
    handler.addFilter(RATE_LIMIT)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_json_logs_name_no_one_and_scrub_the_token(db_url, engine, tmp_path, json_log):
    async with BotAPIStandIn() as standin:
        factory = UpdateFactory(standin)
        settings = service_settings(standin, db_url, tmp_path)
        assert settings.telegram_token is not None
        token = settings.telegram_token.get_secret_value()
        user = factory.new_user(
            first_name="Thị Mộng", last_name="Huỳnh", username="mong_huynh", user_id=987_612_345
        )
        async with running_service(settings) as service:
            await file_tip(Chat(standin, factory, service, user), "vi", "Bán ma túy ở quán")
            standin.fail_next("sendMessage", 500, "Internal Server Error")
            await Chat(standin, factory, service, user).command("start")
            try:
                raise RuntimeError(f"{standin.base_url}{token}/getMe")
            except RuntimeError:
                logging.getLogger("tinbao.test").exception("calling %s failed", "getMe")
    lines = [line for line in json_log.getvalue().splitlines() if line]
    assert lines
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any("traceback" in entry for entry in entries)
    text = json_log.getvalue()
    for needle in (str(user.id), "mong_huynh", "Mộng", "Huỳnh", token):
        assert needle not in text, needle
    assert "[redacted]" in text


async def test_a_second_polling_process_is_refused(db_url, engine, tmp_path):
    async with BotAPIStandIn() as standin:
        settings = service_settings(standin, db_url, tmp_path)
        async with running_service(settings):
            second = await Service.create(settings)
            try:
                with pytest.raises(ConfigError, match="already polling Telegram for bot"):
                    await second.start()
            finally:
                await second.stop()
        # Once the first one stopped, polling may start again.
        async with running_service(settings) as service:
            assert service.telegram is not None
            assert service.telegram.state == "polling"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_worker_serves_health_and_metrics_but_no_webhook_or_panel(
    db_url, engine, tmp_path
):
    async with BotAPIStandIn() as standin:
        settings = service_settings(
            standin,
            db_url,
            tmp_path,
            webhook_url="https://example.org/telegram/webhook",
            webhook_secret="a-long-random-webhook-secret-1",
        )
        service = await Service.create(settings, Role.WORKER)
        await service.start()
        try:
            assert service.send_only is not None
            assert not list(service.channels)
            async with TestClient(TestServer(build_web_app(service))) as client:
                assert (await client.get("/healthz")).status == 200
                assert (await client.get("/metrics")).status == 200
                assert (await client.post("/telegram/webhook", data=b"{}")).status in (404, 405)
                assert (await client.get("/admin/")).status == 404
            # It neither polls nor sets the webhook: those belong to the web processes.
            assert not standin.calls_for("setWebhook")
            assert not standin.calls_for("getUpdates")
        finally:
            await service.stop()
