"""Every panel route fed random and boundary values (hypothesis): never a 5xx, never a
traceback in the body, every answer carries the security headers, and every page is in the
language the officer chose (the language cookie; Vietnamese when it is missing or forged). On
SQLite and PostgreSQL.

The panel runs on the test's event loop; hypothesis drives it from a worker thread with a plain
``http.client``, signed in as an admin (who reaches every page). The routes explored are checked
against the routes the panel's router holds, so that a new route cannot be forgotten; signing out
(which would end the session the exploration runs in) is fed hostile values once, at the end.
The webhooks and the citizens' page: ``tests/test_webhook_properties.py``.
"""

# ruff: noqa: F811 (the env fixture is imported from tests.test_admin)

from __future__ import annotations

import asyncio
import http.client
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from admin.auth import LANG_COOKIE, SESSION_COOKIE
from handlers.i18n import t
from tests.routes import routes_of
from tests.test_admin import Env, env  # noqa: F401 (the fixture)

BOUNDARY = (
    "",
    "0",
    "-1",
    "1",
    "²",
    "١٢",
    "9" * 19,
    "9" * 60,
    str(2**63),
    str(2**63 - 1),
    str(-(2**63)),
    "9999",
    "0000",
    "9999-12",
    "2025-13",
    "9999-12-31",
    "0001-01-01",
    "2025-02-30",
    "2025-06-15",
    "\x00",
    "%00",
    "a\x00b",
    "\u202e",
    "<script>",
    "' OR 1=1 --",
    "x" * 5000,
    "MjAyNS0wMS0wMVQwMDowMDowMCswMDowMHw5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",
    "OTk5OS0xMi0zMVQwMDowMDowMCswMDowMHw1",
    "//evil.example",
    "/admin/../../etc/passwd",
)

TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),  # no lone surrogates: not encodable
    max_size=40,
)
VALUE = st.one_of(st.sampled_from(BOUNDARY), TEXT, st.integers().map(str))

QUERY_NAMES = (
    "status",
    "unit",
    "category",
    "from",
    "to",
    "emergency",
    "code",
    "after",
    "actor",
    "kind",
    "action",
    "before",
    "period",
    "l",
    "next",
    "done",
    "queue",
    "sort",
    "dir",
    "page",
)
FORM_NAMES = (
    "queue",
    "outcome",
    "subjects",
    "arrest",
    "duplicate_of",
    "reason",
    "question",
    "amount",
    "decision",
    "claim",
    "reference",
    "telegram_user_id",
    "role",
    "name",
    "username",
    "password",
    "next",
)

GET_ROUTES = (
    "/admin/",
    "/admin/reports",
    "/admin/reports/{}",
    "/admin/media/{}",
    "/admin/rewards",
    "/admin/stats",
    "/admin/stats/units",
    "/admin/stats/report",
    "/admin/stats/report.pdf",
    "/admin/stats/chart/{}.svg",
    "/admin/stats/export.{}",
    "/admin/officers",
    "/admin/units",
    "/admin/units/{}/poster",
    "/admin/units/{}/qr.svg",
    "/admin/audit",
    "/admin/lang",
    "/admin/login",
    "/admin/static/{}",
)
#: Every POST route but signing out, which would end the session the exploration runs in.
POST_ROUTES = (
    "/admin/reports/{}/{}",
    "/admin/rewards/pay",
    "/admin/rewards/{}/decide",
    "/admin/officers/enrol",
    "/admin/officers/{}/revoke",
    "/admin/login",
)
#: The actions of ``/admin/reports/{code}/{action}``.
ACTIONS = ("claim", "ack", "progress", "transfer", "resolve", "reject", "ask", "reward")
#: Fed hostile values once, after the exploration.
SIGN_OUT = ("/admin/logout", "/admin/logout/everywhere")
#: The language cookie as sent: none, the two languages, and forged values.
LANG_COOKIES = (None, "vi", "en", "fr", "EN", "", "<script>", "vi;en")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    lang: str | None = None
    #: The form sent as ``multipart/form-data`` (as the question form, with its photo, is).
    multipart: bool = False


@st.composite
def calls(draw: st.DrawFn, known: tuple[str, ...] = ()) -> Call:
    """A request; ``known`` are real identifiers (a report's code and id, a unit's code, an
    officer's id), drawn as often as random values so that real rows are reached too."""
    value = st.one_of(st.sampled_from(known), VALUE) if known else VALUE
    method = draw(st.sampled_from(("GET", "POST")))
    route = draw(st.sampled_from(GET_ROUTES if method == "GET" else POST_ROUTES))
    segments = [quote(draw(value), safe="") or "x" for _ in range(route.count("{}"))]
    if route == "/admin/reports/{}/{}":  # mostly a real action
        segments[1] = draw(st.one_of(st.sampled_from(ACTIONS), st.just(segments[1])))
    path = route.format(*segments)
    query = draw(st.dictionaries(st.sampled_from(QUERY_NAMES), value, max_size=6))
    form = draw(st.dictionaries(st.sampled_from(FORM_NAMES), value, max_size=6))
    lang = draw(st.sampled_from(LANG_COOKIES))
    encoded = method == "POST" and draw(st.integers(0, 3)) == 0
    return Call(method, path, query, form if method == "POST" else {}, lang, encoded)


def multipart(
    fields: dict[str, str],
    files: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body and its content type."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode("utf-8", "surrogatepass") + b"\r\n"
    for name, filename, content in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _send(
    host: str, port: int, cookie: str, csrf: str, call: Call
) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    target = call.path + ("?" + urlencode(call.query) if call.query else "")
    cookies = f"{SESSION_COOKIE}={cookie}"
    if call.lang is not None:
        cookies += f"; {LANG_COOKIE}={quote(call.lang, safe='')}"
    headers = {"Cookie": cookies}
    body = None
    if call.method == "POST" and call.multipart:
        body, headers["Content-Type"] = multipart({**call.form, "csrf": csrf})
    elif call.method == "POST":
        body = urlencode({**call.form, "csrf": csrf}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(call.method, target, body=body, headers=headers)
    response = connection.getresponse()
    content = response.read()
    connection.close()
    return response, content


def check(call: Call, response: http.client.HTTPResponse, content: bytes) -> None:
    """The properties every answer holds."""
    assert response.status < 500, (response.status, call)
    assert response.getheader("X-Frame-Options") == "DENY", call
    assert response.getheader("Content-Security-Policy"), call
    assert b"Traceback" not in content and b'File "/' not in content, call
    if "text/html" in (response.getheader("Content-Type") or ""):
        page = content.decode()
        expected = call.lang if call.lang in ("vi", "en") else "vi"
        assert f'<html lang="{expected}">' in page, (expected, call)
        if '<header class="top">' in page:
            assert t(expected, "admin.title") in page, (expected, call)


def _explore(host: str, port: int, cookie: str, csrf: str, known: tuple[str, ...]) -> None:
    # Every route once for sure, with a real identifier, then hypothesis's draws.
    for method, routes in (("GET", GET_ROUTES), ("POST", POST_ROUTES)):
        for route in routes:
            for value in known[:2]:
                call = Call(method, route.format(*[value] * route.count("{}")), {}, {}, "en")
                check(call, *_send(host, port, cookie, csrf, call))

    @settings(max_examples=120, deadline=None, database=None, derandomize=True)
    @given(call=calls(known))
    def one(call: Call) -> None:
        response, content = _send(host, port, cookie, csrf, call)
        check(call, response, content)

    one()


async def test_no_route_answers_5xx_to_random_and_boundary_values(env: Env) -> None:
    chief = await env.add_officer("chief", "admin")
    report = await env.add_report(env.unit_a)
    known = (report.code, str(report.id), env.unit_a, str(chief), "admin.css", "qa", "csv")
    # The routes explored are the ones the running server's panel holds.
    served = {r for r in routes_of(env.client.app) if r[1].startswith("/admin/")}
    explored = {("GET", route) for route in GET_ROUTES} | {("POST", r) for r in POST_ROUTES}
    assert served == explored | {("POST", route) for route in SIGN_OUT}, served ^ explored
    assert await env.login("chief") == 303
    csrf = await env.csrf()
    jar = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/admin/"))
    cookie = jar[SESSION_COOKIE].value
    url = env.client.make_url("/")
    assert url.host is not None and url.port is not None
    await asyncio.to_thread(_explore, url.host, url.port, cookie, csrf, known)
    # Still signed in and working afterwards.
    assert (await env.client.get("/admin/", allow_redirects=False)).status == 200
    # Signing out, fed hostile values: refused without the session's token, never a 5xx.
    for path in SIGN_OUT:
        for form in ({"next": "//evil.example"}, {"csrf": "x" * 5000}, {"csrf": "\x00"}):
            call = Call("POST", path, {"next": "//evil.example"}, form, "en")
            response, content = await asyncio.to_thread(
                _send_raw, url.host, url.port, cookie, call
            )
            assert response.status == 403, (response.status, call)
            check(call, response, content)
    assert (await env.client.get("/admin/", allow_redirects=False)).status == 200


def _send_raw(
    host: str, port: int, cookie: str, call: Call
) -> tuple[http.client.HTTPResponse, bytes]:
    """``call`` with its form as given (no CSRF token added)."""
    connection = http.client.HTTPConnection(host, port, timeout=60)
    headers = {
        "Cookie": f"{SESSION_COOKIE}={cookie}; {LANG_COOKIE}={call.lang}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    target = call.path + "?" + urlencode(call.query)
    connection.request(call.method, target, body=urlencode(call.form).encode(), headers=headers)
    response = connection.getresponse()
    content = response.read()
    connection.close()
    return response, content
