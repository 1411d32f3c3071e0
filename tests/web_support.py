"""Shared pieces of the citizen page's tests: a running service with the Bot API stand-in, a
form filler that reads the page's own CSRF token and challenge, and a GPS-tagged JPEG."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, FormData
from PIL import Image

from bot.cli import app_runner, build_app
from bot.runtime import Service
from tests.e2e import running_service, service_settings
from tests.standin import BotAPIStandIn
from tests.standin.factory import Group

LX = Group(-1002000000001, "Công an phường Long Xuyên")
LX_UNIT = "30307"
DUTY = -1009999999999
FORWARDED = "203.0.113.77"
_CHALLENGE = re.compile(r"(\w+) (?:cộng|plus) (\w+)")
NUMBERS = {
    word: n
    for n, words in enumerate(
        [
            (),
            ("Một", "One"),
            ("Hai", "Two"),
            ("Ba", "Three"),
            ("Bốn", "Four"),
            ("Năm", "Five"),
            ("Sáu", "Six"),
            ("Bảy", "Seven"),
            ("Tám", "Eight"),
        ]
    )
    for word in words
}


def gps_jpeg() -> bytes:
    """A small JPEG whose EXIF carries a GPS position and a camera model."""
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 9"
    gps = exif.get_ifd(0x8825)
    gps[0x01], gps[0x02] = "N", (10.0, 22.0, 30.5)
    gps[0x03], gps[0x04] = "E", (105.0, 26.0, 12.25)
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "JPEG", exif=exif)
    data = out.getvalue()
    assert b"GPS" in data or b"SecretCam" in data
    return data


def answer(question: str) -> str:
    match = _CHALLENGE.search(question)
    assert match, question
    return str(NUMBERS[match.group(1)] + NUMBERS[match.group(2)])


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, name
    return match.group(1)


def challenge_of(html: str) -> str:
    match = re.search(r'<label for="challenge">[^:]*: ([^<]*)</label>', html)
    assert match
    return answer(match.group(1).replace("&#39;", "'"))


async def fill(
    http: ClientSession, base: str, path: str, fields: dict[str, str], files: Any = ()
) -> tuple[int, str]:
    """GET the form, then POST it with its own CSRF token, challenge answer and ``fields``."""
    async with http.get(f"{base}{path}") as response:
        html = await response.text()
    form = FormData()
    form.add_field("csrf", hidden(html, "csrf"))
    form.add_field("lang", "vi")
    if "challenge_token" in html:
        form.add_field("challenge_token", hidden(html, "challenge_token"))
        form.add_field("challenge", challenge_of(html))
    for name, value in fields.items():
        form.add_field(name, value)
    for name, filename, content, mime in files:
        form.add_field(name, content, filename=filename, content_type=mime)
    async with http.post(f"{base}{path.split('?')[0]}", data=form) as response:
        return response.status, await response.text()


def code_and_pin(html: str) -> tuple[str, str]:
    code = re.search(r'<dd id="code">([^<]+)</dd>', html)
    pin = re.search(r'<dd id="pin">([^<]+)</dd>', html)
    assert code and pin, html[:2000]
    return code.group(1), pin.group(1)


@pytest.fixture(name="standin")
async def standin_fixture() -> AsyncIterator[BotAPIStandIn]:
    async with BotAPIStandIn() as server:
        yield server


@pytest.fixture(name="service")
async def service_fixture(
    standin: BotAPIStandIn, db_url: str, engine: object, tmp_path: Path
) -> AsyncIterator[Service]:
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        f'units = ["{LX_UNIT}"]\n',
        encoding="utf-8",
    )
    settings = service_settings(
        standin,
        db_url,
        tmp_path,
        queues_file=queues,
        duty_chat_id=DUTY,
        admin_telegram_ids=[515151],
        public_url="https://tinbao.example.vn",
        trusted_proxies=["127.0.0.1"],
    )
    async with running_service(settings) as running:
        yield running


@pytest.fixture(name="base_url")
async def base_url_fixture(service: Service) -> AsyncIterator[str]:
    """The service's web app on a free port, run exactly as ``tinbao run`` runs it."""
    from aiohttp import web

    runner = app_runner(build_app(service))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
