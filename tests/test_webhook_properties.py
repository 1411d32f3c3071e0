"""The webhooks and the citizens' page fed random, hostile and boundary input (hypothesis, issue
12), on a whole running service: Telegram by webhook, the Zalo Bot webhook, the Zalo OA webhook,
the citizens' pages and forms, the health and metrics routes and the Zalo photo links. The panel's
routes are explored by ``tests/test_admin_properties.py``; together the two cover every route the
server holds, which is checked here against the application's router, so that a new route cannot
be forgotten.

The properties:

- never a 5xx, never a traceback in a body; a webhook answers 200, 400 (not an update) or 403
  (not authenticated), exactly as its request deserves; every citizen page carries its headers;
- nothing fails later either: every update the webhooks took is handled (the spool drains) and
  no handler logs an error;
- answers in the user's language: a citizen page in the language asked for (``?lang=``, the
  form's ``lang``, ``Accept-Language``, else Vietnamese), Telegram citizens in their app's
  language, Zalo citizens in Vietnamese;
- no draft lost: a Telegram tipster halfway through a tip, whose chat gets malformed updates and
  forged presses meanwhile, still has their draft, unchanged, and sends it; a form refused on
  the page (wrong question, missing field, rate limit) gives back the text typed in it.

The service runs on the test's event loop; hypothesis drives it from a worker thread with plain
``http.client`` requests. The example count is modest: the point is breadth, on both databases.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import itertools
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import select

from bot.cli import app_runner, build_app
from bot.runtime import Service
from handlers.i18n import catalogue, pick_locale, t
from storage.models import Conversation, Report
from tests.e2e import Chat, running_service, service_settings
from tests.routes import routes_of
from tests.standin import BotAPIStandIn
from tests.standin.factory import Group, UpdateFactory, User
from tests.standin.zalo_bot import DEFAULT_TOKEN, ZaloBotStandIn, ZaloUser
from tests.standin.zalo_oa import (
    APP_ID,
    APP_SECRET,
    FIRST_REFRESH_TOKEN,
    OA_SECRET_KEY,
    ZaloOAStandIn,
    signed,
)
from tests.test_admin_properties import (
    BOUNDARY,
    GET_ROUTES,
    POST_ROUTES,
    SIGN_OUT,
    TEXT,
    multipart,
)
from tests.web_support import answer

TELEGRAM_SECRET = "telegram-webhook-secret-0123456789"
ZALO_SECRET = "zalo-webhook-secret-0123456789"
LX = Group(-1002000000001, "Công an phường Long Xuyên")
LX_UNIT = "30307"
DUTY = -1009999999999

# ------------------------------------------------------------------------------ the routes

#: The routes explored here, as :func:`tests.routes.routes_of` writes them.
CITIZEN_GET = (
    "/",
    "/tip",
    "/accident",
    "/places",
    "/status",
    "/status/report",
    "/status/photo/{}",
    "/favicon.ico",
    "/assets/{}",
)
CITIZEN_POST = ("/tip", "/accident", "/status", "/status/report")
PROCESS_GET = ("/healthz", "/readyz", "/metrics", "/admin", "/zalo/bot/photo/{}/{}/{}")
WEBHOOKS = ("/telegram/webhook", "/zalo/bot/webhook", "/zalo/oa/webhook")


def explored_here() -> set[tuple[str, str]]:
    return (
        {("GET", p) for p in (*CITIZEN_GET, *PROCESS_GET)}
        | {("POST", p) for p in CITIZEN_POST}
        | {("POST", p) for p in WEBHOOKS}
    )


def explored_by_the_panel_test() -> set[tuple[str, str]]:
    return (
        {("GET", p) for p in GET_ROUTES}
        | {("POST", p) for p in POST_ROUTES}
        | {("POST", p) for p in SIGN_OUT}
    )


# ------------------------------------------------------------------------------ the values

VALUE = st.one_of(st.sampled_from(BOUNDARY), TEXT, st.integers().map(str))
#: Any JSON value (no NaN or infinity: not JSON).
JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.sampled_from(BOUNDARY),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
#: JSON that is not text: what a field of a malformed update is replaced with.
NOT_TEXT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.lists(JSON_VALUE, max_size=2),
    st.dictionaries(TEXT, JSON_VALUE, max_size=2),
)
RAW_BODIES = (
    b"",
    b"{",
    b"[]",
    b"null",
    b"\xff\xfe\xfd",
    b'{"update_id": "1"}',
    b'{"update_id": true, "message": {}}',
    b'{"update_id": 1e400}',
    b"[" * 5000 + b"]" * 5000,
    b'{"update_id": 7, "message": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
)
#: Typed by a citizen on the page: realistic and hostile, never blank (a blank one is cleaned
#: to nothing and not shown again, as it should be).
TYPED = st.one_of(
    st.sampled_from(
        (
            "Trộm xe máy trước cổng chợ lúc sáng sớm",
            "<script>alert(1)</script> bán ma túy ở hẻm 5",
            "Có người \"lạ\" & 'đáng ngờ' ở bến xe",
            "x",
            "A" * 5000,
            "Line one\nLine two\n\nLine three",
            "😀👍🏽 đánh nhau ở quán 🍻",
        )
    ),
    st.text(
        alphabet=st.characters(categories=["L", "N", "P", "Zs", "So"]), min_size=1, max_size=60
    ).filter(str.strip),
)
ACCEPT_LANGUAGE = st.one_of(
    st.none(),
    st.sampled_from(("en", "en-GB,en;q=0.9", "vi-VN,vi", "fr,de", "*", "EN-us", "zz-Latn")),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
LANG = st.one_of(st.none(), st.sampled_from(("vi", "en", "fr", "", "EN", "<x>")))


# ------------------------------------------------------------------------------ one request


@dataclass(frozen=True)
class Request:
    """One HTTP request, and what is expected of its answer."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    #: The status a webhook must answer (``None``: any below 500).
    status: int | None = None
    #: The page's language, when it is determined (``None``: not checked).
    locale: str | None = None
    #: Text typed in a form that must come back if the form is refused.
    typed: str | None = None
    #: What the request is, for the failure message.
    note: str = ""

    def __repr__(self) -> str:
        body = (self.body or b"")[:300]
        return (
            f"Request({self.method} {self.path[:200]} {self.note} headers={self.headers} {body!r})"
        )


def citizen_locale(
    query_lang: str | None, form_lang: str | None, accept: str | None
) -> str | None:
    """The language a citizen page must answer in: ``?lang=``, else the form's ``lang``, else
    ``Accept-Language``'s first language that tinbao speaks, else Vietnamese. ``None`` where an
    invalid ``?lang=`` meets a valid form ``lang`` (either reading is defensible)."""
    if query_lang in ("vi", "en"):
        return query_lang
    if query_lang and form_lang in ("vi", "en"):
        return None
    if not query_lang and form_lang in ("vi", "en"):
        return form_lang
    for part in (accept or "").split(","):
        tag = part.split(";")[0].strip()
        if tag and pick_locale(tag, ""):
            return pick_locale(tag, "")
    return "vi"


class World:
    """What the strategies draw from: the users, the CSRF cookie, sealed challenges."""

    def __init__(
        self, bot_user: dict[str, Any], csrf: str, challenges: list[tuple[str, str, str]]
    ) -> None:
        # Without the stand-in: its message ids and file ids are its own (a photo's file is
        # unknown to the Bot API, as a forged one would be).
        self.factory = UpdateFactory(bot_user=bot_user, first_update_id=1_000_000)
        # Press ids apart from the stand-in factory's: the answers are matched by them.
        self.factory._callback_ids = itertools.count(5_000_000_000_000_000_001)
        self.csrf = csrf
        #: (token, question, answer) of questions asked by the page; used at most once each.
        self.challenges = challenges
        self.used = 0
        #: Telegram users whose replies are checked: their app's language decides.
        self.telegram_users = [
            User(910001, "John", "Smith", None, "en"),
            User(910002, "Lan", "Nguyễn", None, "vi"),
            User(910003, "Ann", None, None, "en-GB"),
            User(910004, "Jean", None, None, "fr"),
            User(910005, "Minh", None, None, None),
        ]
        #: Malformed and odd updates come from these (their replies are not checked).
        self.noise = User(910099, "Noise", None, None, "en")
        self.zalo_users = [ZaloUser("7100"), ZaloUser("7101")]
        #: Forged presses of the checked users: callback id -> (expected language, data).
        self.callbacks: dict[str, tuple[str, str]] = {}

    def next_challenge(self) -> tuple[str, str, str] | None:
        if self.used >= len(self.challenges):
            return None
        self.used += 1
        return self.challenges[self.used - 1]


def mutations(update: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Every path inside ``update`` (dict keys and list indexes), ``update_id`` left out."""
    paths: list[tuple[str | int, ...]] = []

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if path or key != "update_id":
                    paths.append((*path, key))
                    walk(value, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                paths.append((*path, index))
                walk(value, (*path, index))

    walk(update, ())
    return paths


def mutate(draw: st.DrawFn, update: dict[str, Any], values: st.SearchStrategy[Any]) -> None:
    """Drop or replace up to three fields of ``update`` (in place)."""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = mutations(update)
        if not paths:
            return
        path = draw(st.sampled_from(paths))
        parent: Any = update
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)


@st.composite
def telegram_requests(draw: st.DrawFn, world: World) -> Request:
    f = world.factory
    shape = draw(
        st.sampled_from(("text", "command", "press", "media", "group", "malformed", "raw", "json"))
    )
    expected_locale = None
    if shape in ("text", "command", "press", "media"):
        user = draw(st.sampled_from(world.telegram_users))
        expected_locale = pick_locale(user.language_code, "vi")
        if shape == "text":
            update = f.text(user, draw(TEXT.filter(lambda s: s.strip() and s[0] != "/")))
        elif shape == "command":
            name = draw(st.sampled_from(("start", "help", "status", "cancel", "lang", "x" * 40)))
            update = f.command(user, name, draw(st.one_of(st.none(), VALUE)))
        elif shape == "press":  # a forged or stale press
            update = f.callback(user, draw(st.one_of(st.sampled_from(BOUNDARY), TEXT))[:64])
            world.callbacks[update["callback_query"]["id"]] = (
                expected_locale,
                update["callback_query"]["data"],
            )
        else:
            update = draw(
                st.sampled_from(
                    (
                        f.sticker(user),
                        f.location(user, 10.38, 105.43),
                        f.contact(user, "0912345678"),
                        f.photo(user),
                    )
                )
            )
    elif shape == "group":  # in a group the bot is in, or one it does not know
        group = draw(st.sampled_from((LX, Group(-1001234, "Lạ"), Group(DUTY, "Trực ban"))))
        update = draw(
            st.sampled_from(
                (
                    f.group_text(world.noise, draw(TEXT), group=group),
                    f.group_command(world.noise, "queue", draw(VALUE), group=group),
                    f.group_command(world.noise, "enrol", draw(VALUE), group=group),
                    f.callback(world.noise, "r:claim:" + draw(VALUE)[:40], chat=group),
                )
            )
        )
    elif shape == "malformed":
        base = draw(
            st.sampled_from(
                (
                    f.text(world.noise, "Trộm xe máy ở chợ"),
                    f.command(world.noise, "start"),
                    f.callback(world.noise, "x"),
                    f.photo(world.noise),
                    f.location(world.noise, 10.38, 105.43),
                    f.edited_text(f.text(world.noise, "a")["message"], "b"),
                    f.my_chat_member(world.noise),
                )
            )
        )
        mutate(draw, base, JSON_VALUE)
        update = base
    elif shape == "raw":
        body = draw(st.sampled_from(RAW_BODIES))
        return Request(
            "POST", WEBHOOKS[0], _telegram_headers(TELEGRAM_SECRET), body, 400, note="raw"
        )
    else:  # any JSON at all
        update = draw(st.dictionaries(TEXT, JSON_VALUE, max_size=4))
        if draw(st.booleans()):
            update["update_id"] = draw(JSON_VALUE)
    update_id = update.get("update_id")
    is_update = isinstance(update_id, int) and not isinstance(update_id, bool)
    secret = draw(secrets(TELEGRAM_SECRET))
    status = 403 if secret != TELEGRAM_SECRET else 200 if is_update else 400
    if status != 200 and shape == "press":
        world.callbacks.pop(update["callback_query"]["id"], None)
    return Request(
        "POST",
        WEBHOOKS[0],
        _telegram_headers(secret),
        json.dumps(update).encode(),
        status,
        locale=expected_locale if status == 200 else None,
        note=shape,
    )


def secrets(right: str) -> st.SearchStrategy[str | None]:
    """Mostly the right secret header (hypothesis shrinks towards it), else a wrong one."""
    wrong = st.sampled_from((None, "", "wrong", right[:-1], right.upper()))
    return st.integers(0, 4).flatmap(lambda n: st.just(right) if n < 4 else wrong)


def _telegram_headers(secret: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return headers


@st.composite
def zalo_bot_requests(draw: st.DrawFn, world: World) -> Request:
    user = draw(st.sampled_from(world.zalo_users))
    shape = draw(st.sampled_from(("text", "odd", "malformed", "json", "raw")))
    update: Any = None
    if shape == "text":
        update = user.text(draw(TEXT.filter(str.strip)), event_name=draw(st.booleans()))
        if draw(st.booleans()):
            update = {"ok": True, "result": update}
    elif shape == "odd":
        update = draw(
            st.sampled_from(
                (user.sticker(), user.image("not-a-url"), user.image("//evil.example"))
            )
        )
    elif shape == "malformed":
        update = ZaloUser("7199").text("Trộm xe máy")
        mutate(draw, update, JSON_VALUE)
    elif shape == "json":
        update = draw(JSON_VALUE)
    raw = shape == "raw"
    body = draw(st.sampled_from(RAW_BODIES)) if raw else json.dumps(update).encode()
    secret = draw(secrets(ZALO_SECRET))
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Bot-Api-Secret-Token"] = secret
    # Whether the body holds an update is the channel's own reading (unwrap): any status
    # below 500 is allowed with the right secret, and only 403 without it.
    return Request(
        "POST", WEBHOOKS[1], headers, body, 403 if secret != ZALO_SECRET else None, note=shape
    )


@st.composite
def zalo_oa_requests(draw: st.DrawFn, world: World, oa: ZaloOAStandIn) -> Request:
    user = draw(st.sampled_from(("8100", "8101", "8199")))
    event = draw(
        st.sampled_from(
            (
                oa.event(user, "user_send_text", {"text": draw(TEXT) or "x"}),
                oa.event(
                    user, "user_send_location", {"location": {"latitude": 1, "longitude": 2}}
                ),
                oa.event(user, "user_send_sticker", {"attachments": [{"type": "sticker"}]}),
                oa.event(user, "follow"),
                oa.event(user, "user_seen_message", {}),
            )
        )
    )
    if user == "8199" or draw(st.integers(0, 3)) == 0:
        mutate(draw, event, JSON_VALUE)
    raw, headers = signed(event) if _signable(event) else (json.dumps(event).encode(), {})
    how = draw(st.sampled_from(("signed",) * 4 + ("unsigned", "forged", "raw")))
    if how == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif how == "forged":
        headers = {"X-ZEvent-Signature": "mac=" + "0" * 64, "Content-Type": "application/json"}
    elif how == "raw":
        raw = draw(st.sampled_from(RAW_BODIES))
    return Request("POST", WEBHOOKS[2], headers, raw, None, note=f"{how} {user}")


def _signable(event: Any) -> bool:
    return isinstance(event, dict) and "app_id" in event and "timestamp" in event


@st.composite
def citizen_requests(draw: st.DrawFn, world: World) -> Request:
    accept = draw(ACCEPT_LANGUAGE)
    headers: dict[str, str] = {}
    if accept is not None:
        headers["Accept-Language"] = accept
    query = draw(
        st.dictionaries(st.sampled_from(("lang", "u", "q", "sent", "x")), VALUE, max_size=3)
    )
    if draw(st.booleans()):
        lang = draw(LANG)
        if lang is not None:
            query["lang"] = lang
    if draw(st.booleans()):
        query["u"] = draw(st.sampled_from((LX_UNIT, "99999", "<b>")))
    method = draw(st.sampled_from(("GET", "POST")))
    if method == "GET":
        path = draw(st.sampled_from(CITIZEN_GET)).replace("{}", quote(draw(VALUE), safe="") or "x")
        body = None
        form_lang = None
        typed = None
    else:
        path = draw(st.sampled_from(CITIZEN_POST))
        fields: dict[str, str] = draw(
            st.dictionaries(
                st.sampled_from(
                    (
                        "category",
                        "place_q",
                        "unit",
                        "unit_unknown",
                        "occurred",
                        "occurred_text",
                        "contact",
                        "phone",
                        "lat",
                        "lon",
                        "injured",
                        "code",
                        "pin",
                        "kept",
                    )
                ),
                VALUE,
                max_size=5,
            )
        )
        if draw(st.booleans()):
            fields.update({"category": "theft", "place_q": "long xuyen", "contact": "none"})
        typed = draw(TYPED)
        if path == "/tip":
            fields["description"] = typed
        elif path == "/accident":
            fields["place_q"] = typed
        elif path == "/status/report":
            fields["message"] = typed
        else:
            typed = None
        form_lang = draw(LANG)
        if form_lang is not None:
            fields["lang"] = form_lang
        good_csrf = draw(st.integers(0, 4)) < 4  # shrinks towards the right token
        fields["csrf"] = world.csrf if good_csrf else draw(st.sampled_from(("", "x" * 40)))
        if not good_csrf:
            typed = None  # a forged form is refused outright: nothing to give back
        if path in ("/tip", "/accident"):
            challenge = world.next_challenge() if draw(st.integers(0, 2)) < 2 else None
            if challenge is not None:
                token, question, right = challenge
                fields["challenge_token"] = token
                fields["challenge_question"] = question
                fields["challenge"] = right if draw(st.booleans()) else draw(VALUE)[:5]
            else:
                fields["challenge"] = draw(VALUE)[:5]
        if draw(st.booleans()):
            files = [
                (
                    "evidence" if path != "/accident" else "photo",
                    "a.jpg",
                    draw(st.binary(max_size=64)),
                )
            ]
            body, content_type = multipart(fields, files)
        else:
            body, content_type = urlencode(fields).encode(), "application/x-www-form-urlencoded"
        headers["Content-Type"] = content_type
    headers["Cookie"] = f"tb_csrf={world.csrf}"
    if query:
        path = f"{path}?{urlencode(query)}"
    locale = citizen_locale(query.get("lang"), form_lang if method == "POST" else None, accept)
    return Request(method, path, headers, body, None, locale=locale, typed=typed, note="citizen")


@st.composite
def process_requests(draw: st.DrawFn) -> Request:
    path = draw(st.sampled_from(PROCESS_GET))
    while "{}" in path:
        path = path.replace("{}", quote(draw(VALUE), safe="") or "x", 1)
    query = draw(st.dictionaries(TEXT, VALUE, max_size=2))
    if query:
        path = f"{path}?{urlencode(query)}"
    return Request("GET", path, note="process")


def requests(world: World, oa: ZaloOAStandIn) -> list[tuple[st.SearchStrategy[Request], int]]:
    """What is explored, and how many examples each: every kind gets its share."""
    return [
        (telegram_requests(world), 60),
        (zalo_bot_requests(world), 25),
        (zalo_oa_requests(world, oa), 25),
        (citizen_requests(world), 60),
        (process_requests(), 10),
    ]


# ------------------------------------------------------------------------------ checking


def send(host: str, port: int, request: Request) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request(
            request.method, request.path, body=request.body, headers=request.headers
        )
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def check(request: Request, response: http.client.HTTPResponse, content: bytes) -> None:
    """The properties of one answer."""
    assert response.status < 500, (response.status, request, content[:500])
    assert b"Traceback" not in content and b'File "/' not in content, request
    assert response.getheader("X-Content-Type-Options") == "nosniff", request
    if request.status is not None:
        assert response.status == request.status, (response.status, request, content[:300])
    if request.path.startswith(WEBHOOKS):
        assert response.status in (200, 400, 403), (response.status, request)
        return
    if request.note == "citizen":
        assert response.getheader("Content-Security-Policy"), request
        assert "no-store" in (response.getheader("Cache-Control") or ""), request
    if "text/html" not in (response.getheader("Content-Type") or ""):
        return
    page = content.decode()
    if request.locale is not None and request.note == "citizen":
        assert f'<html lang="{request.locale}">' in page, (request.locale, request)
        if "<header>" in page:
            assert catalogue(request.locale)["web.title"] in page, (request.locale, request)
    if request.typed is not None and response.status in (400, 429):
        assert str(escape(request.typed)) in page, ("typed text lost", request)


# ------------------------------------------------------------------------------ languages


@functools.cache
def _chunks(locale: str) -> frozenset[str]:
    """Long literal pieces of every catalogue string (what lies between placeholders)."""
    pieces = set()
    for template in catalogue(locale).values():
        for piece in re.split(r"\{[^}]*\}", template):
            for line in piece.split("\n"):
                line = line.strip(" •:·.")
                if len(line) >= 16:
                    pieces.add(line)
    return frozenset(pieces)


def language_of(text: str) -> str | None:
    """``"vi"`` or ``"en"`` if ``text`` holds catalogue pieces of one language only."""
    vi, en = _chunks("vi"), _chunks("en")
    has_vi = any(piece in text for piece in vi - en)
    has_en = any(piece in text for piece in en - vi)
    if has_vi == has_en:
        return None
    return "vi" if has_vi else "en"


# ------------------------------------------------------------------------------ the service


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def stand_ins() -> AsyncIterator[tuple[BotAPIStandIn, ZaloBotStandIn, ZaloOAStandIn]]:
    async with BotAPIStandIn() as telegram, ZaloBotStandIn() as zalo_bot, ZaloOAStandIn() as oa:
        yield telegram, zalo_bot, oa


async def test_no_webhook_or_citizen_route_fails_on_random_and_hostile_input(
    stand_ins, db_url: str, engine: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    telegram, zalo_bot, oa = stand_ins
    port = _free_port()
    queues = tmp_path / "queues.toml"
    queues.write_text(
        f'[[queue]]\nkey = "long-xuyen"\nname = "Cụm Long Xuyên"\nchat_id = {LX.id}\n'
        f'units = ["{LX_UNIT}"]\n',
        encoding="utf-8",
    )
    config = service_settings(
        telegram,
        db_url,
        tmp_path,
        webhook_url=f"http://127.0.0.1:{port}/telegram/webhook",
        webhook_secret=TELEGRAM_SECRET,
        http_port=port,
        queues_file=queues,
        duty_chat_id=DUTY,
        public_url="https://tinbao.example.vn",
        zalo_bot_token=DEFAULT_TOKEN,
        zalo_bot_api_url=zalo_bot.api_url,
        zalo_bot_webhook_url="https://tinbao.example.vn/zalo/bot/webhook",
        zalo_bot_webhook_secret=ZALO_SECRET,
        zalo_oa_app_id=APP_ID,
        zalo_oa_secret_key=OA_SECRET_KEY,
        zalo_app_secret=APP_SECRET,
        zalo_oa_refresh_token=FIRST_REFRESH_TOKEN,
        zalo_oa_api_url=oa.url,
        zalo_oauth_url=oa.url,
    )
    async with running_service(config) as service:
        app = build_app(service)
        runner = app_runner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await _explore(service, app, telegram, zalo_bot, oa, port, caplog)
        finally:
            await runner.cleanup()


async def _explore(
    service: Service,
    app: Any,
    telegram: BotAPIStandIn,
    zalo_bot: ZaloBotStandIn,
    oa: ZaloOAStandIn,
    port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every route the server holds is explored, here or by the panel's property test.
    served = routes_of(app)
    covered = explored_here() | explored_by_the_panel_test()
    assert served == covered, ("not explored:", served - covered, "gone:", covered - served)
    assert service.telegram is not None and service.spool is not None
    async with asyncio.timeout(30):
        while service.telegram.state != "webhook":  # noqa: ASYNC110 - the channel's state
            await asyncio.sleep(0.02)

    # A Telegram tipster halfway through a tip: their draft must come through unharmed.
    factory = UpdateFactory(telegram)
    tipster = factory.new_user(first_name="Ẩn", user_id=920001, language_code="vi")
    chat = Chat(telegram, factory, service, tipster)
    await chat.command("start")
    await chat.press(t("vi", "menu.tip"))
    await chat.press(t("vi", "cat.theft"))
    await chat.say("long xuyen")
    await chat.press("Phường Long Xuyên")
    await chat.press(t("vi", "when.today"))
    before = await _draft(service)
    assert before[1] is not None and before[1].get("category") == "theft", before

    # The page's CSRF cookie, and questions it asked (each may be answered once).
    host = "127.0.0.1"
    response, content = await asyncio.to_thread(
        send, host, port, Request("GET", "/tip", {"Accept-Language": "vi"})
    )
    cookie = response.getheader("Set-Cookie") or ""
    csrf = re.search(r"tb_csrf=([^;]+)", cookie)
    assert csrf, cookie
    challenges = []
    for _ in range(12):
        response, content = await asyncio.to_thread(
            send, host, port, Request("GET", "/tip", {"Cookie": f"tb_csrf={csrf[1]}"})
        )
        page = content.decode()
        token = re.search(r'name="challenge_token" value="([^"]+)"', page)
        question = re.search(r'name="challenge_question" value="([^"]+)"', page)
        assert token and question
        challenges.append((token[1], question[1], answer(question[1].replace("&#39;", "'"))))
    world = World(factory.bot_user, csrf[1], challenges)

    # The tipster's own chat gets malformed updates and forged presses meanwhile.
    tipster_noise = _tipster_noise(factory, tipster, chat)

    with caplog.at_level(logging.WARNING):
        await asyncio.to_thread(_run, host, port, world, oa, tipster_noise)
        await service.spool.drained(timeout=60)
        await _quiet(service)

    # Nothing failed after the answer either.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()) for r in errors]
    assert service.telegram.metrics.handler_errors == 0

    # Answers in the user's language.
    wrong = []
    for user in world.telegram_users:
        expected = pick_locale(user.language_code, "vi")
        for call in telegram.calls:
            if (
                call.chat_id == user.id
                and call.text
                and call.method in ("sendMessage", "editMessageText")
            ):
                found = language_of(call.text)
                if found is not None and found != expected:
                    wrong.append((user.language_code, call.text[:120]))
    for call in telegram.calls_for("answerCallbackQuery"):
        pressed = world.callbacks.get(str(call.params.get("callback_query_id")))
        notice = call.params.get("text")
        if pressed and isinstance(notice, str):
            found = language_of(notice)
            if found is not None and found != pressed[0]:
                wrong.append((f"{pressed[0]}, press {pressed[1]!r}", notice[:120]))
    for sent in zalo_bot.sent() + oa.delivered():
        if language_of(sent) == "en":
            wrong.append(("zalo", sent[:120]))
    assert not wrong, wrong
    answered = [c for c in telegram.calls if c.chat_id == world.telegram_users[0].id and c.text]
    assert answered and all(language_of(c.text or "") in ("en", None) for c in answered)

    # No draft lost: the tipster's draft is as it was, and it is sent as it was.
    assert await _draft(service) == before
    await chat.say("Trộm xe máy trước cổng chợ lúc sáng sớm")
    await chat.press(t("vi", "ev.skip"))
    await chat.press(t("vi", "contact.none", mark=""))
    await chat.press(t("vi", "summary.confirm"))
    async with service.session_factory() as session:
        stored = (await session.scalars(select(Report).where(Report.channel == "telegram"))).all()
    mine = [r for r in stored if r.description == "Trộm xe máy trước cổng chợ lúc sáng sớm"]
    assert len(mine) == 1 and mine[0].category == "theft" and mine[0].unit_code == LX_UNIT


async def _draft(service: Service) -> tuple[str | None, dict[str, Any] | None]:
    """The Telegram tipster's conversation state and draft (the only Telegram draft that is
    not a noise user's: the rows are keyed by a hash, so it is found by its content)."""
    async with service.session_factory() as session:
        rows = (await session.scalars(select(Conversation))).all()
    for row in rows:
        draft = (row.data or {}).get("draft")
        if (
            isinstance(draft, dict)
            and draft.get("unit_code") == LX_UNIT
            and draft.get("category") == "theft"
        ):
            return row.state, draft
    return None, None


def _tipster_noise(factory: UpdateFactory, tipster: User, chat: Chat) -> list[dict[str, Any]]:
    """Updates in the tipster's chat that must not touch their draft: presses on old or forged
    buttons, and messages whose fields are broken (never a well-formed text: that would be an
    answer)."""
    keyboard = chat.last_keyboard_message()
    old = keyboard.result
    noise: list[dict[str, Any]] = []
    for data in ("c:cat:drugs", "menu:tip", "x" * 64, "", "r:claim:1", "\u202e", "²"):
        noise.append(factory.callback(tipster, data, message=old))
        noise.append(factory.callback(tipster, data))
    broken: list[dict[str, Any]] = [
        {"message": 5},
        {"message": {"chat": {"id": tipster.id, "type": "private"}, "text": 5}},
        {"message": {"chat": {"id": tipster.id, "type": "private"}, "from": "x", "date": 1}},
        {"message": {"message_id": 1, "chat": {"id": tipster.id}, "photo": [{}]}},
        {"message": {"message_id": "x", "chat": tipster.private_chat(), "date": "x", "text": []}},
        {"edited_message": {"chat": tipster.private_chat(), "text": {"a": 1}}},
        {"callback_query": {"id": 5, "from": tipster.to_dict(), "data": ["c"]}},
        {"callback_query": {"from": tipster.to_dict(), "data": "c:cat:drugs"}},
    ]
    for body in broken:
        noise.append(factory.update(**body))
    return noise


def _run(
    host: str, port: int, world: World, oa: ZaloOAStandIn, noise: list[dict[str, Any]]
) -> None:
    # Each checked user writes once for sure (the exploration may or may not reach them).
    f = world.factory
    greetings = [f.command(u, "start") for u in world.telegram_users]
    greetings += [f.text(u, "hello, is anyone there") for u in world.telegram_users]
    for update in greetings:
        request = Request(
            "POST",
            WEBHOOKS[0],
            _telegram_headers(TELEGRAM_SECRET),
            json.dumps(update).encode(),
            200,
            note="greeting",
        )
        response, content = send(host, port, request)
        check(request, response, content)
    # Every page and form once for sure, in English, with a typed description to give back.
    for path in (*CITIZEN_GET, *PROCESS_GET):
        request = Request("GET", path.replace("{}", "x") + "?lang=en", locale="en", note="once")
        check(request, *send(host, port, request))
    for path in CITIZEN_POST:
        typed = 'Trộm <b>xe</b> máy & "xe đạp"'
        fields = {"csrf": world.csrf, "lang": "en", "description": typed, "place_q": typed}
        headers = {"Cookie": f"tb_csrf={world.csrf}"}
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode({**fields, "message": typed}).encode()
        kept = typed if path != "/status" else None  # the status form has code and PIN only
        request = Request("POST", path, headers, body, locale="en", typed=kept, note="citizen")
        check(request, *send(host, port, request))
    for update in noise:
        request = Request(
            "POST",
            WEBHOOKS[0],
            _telegram_headers(TELEGRAM_SECRET),
            json.dumps(update).encode(),
            200,
            note="tipster noise",
        )
        response, content = send(host, port, request)
        check(request, response, content)

    for strategy, examples in requests(world, oa):

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True)
        @given(request=strategy)
        def one(request: Request) -> None:
            response, content = send(host, port, request)
            check(request, response, content)

        one()


async def _quiet(service: Service) -> None:
    """Until the Telegram channel has handled everything it took and the outbox is idle."""
    assert service.telegram is not None
    last = -1
    async with asyncio.timeout(60):
        while last != service.telegram.updates_handled:
            last = service.telegram.updates_handled
            await asyncio.sleep(0.5)
