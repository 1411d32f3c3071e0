"""Every panel route fed random and boundary values (hypothesis): never a 5xx, and every answer
carries the security headers. On SQLite and PostgreSQL.

The panel runs on the test's event loop; hypothesis drives it from a worker thread with a plain
``http.client``, signed in as an admin (who reaches every page).
"""

# ruff: noqa: F811 (the env fixture is imported from tests.test_admin)

from __future__ import annotations

import asyncio
import http.client
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from admin.auth import SESSION_COOKIE
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
    "/admin/stats/chart/{}.svg",
    "/admin/stats/export.{}",
    "/admin/officers",
    "/admin/units",
    "/admin/units/{}/poster",
    "/admin/units/{}/qr.svg",
    "/admin/audit",
    "/admin/lang",
    "/admin/login",
)
#: Every POST route but signing out, which would end the session the exploration runs in.
POST_ROUTES = (
    "/admin/reports/{}/claim",
    "/admin/reports/{}/{}",
    "/admin/rewards/pay",
    "/admin/rewards/{}/decide",
    "/admin/officers/enrol",
    "/admin/officers/{}/revoke",
    "/admin/login",
)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]


@st.composite
def calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(("GET", "POST")))
    route = draw(st.sampled_from(GET_ROUTES if method == "GET" else POST_ROUTES))
    segments = [quote(draw(VALUE), safe="") or "x" for _ in range(route.count("{}"))]
    path = route.format(*segments)
    query = draw(st.dictionaries(st.sampled_from(QUERY_NAMES), VALUE, max_size=6))
    form = draw(st.dictionaries(st.sampled_from(FORM_NAMES), VALUE, max_size=6))
    return Call(method, path, query, form if method == "POST" else {})


def _send(host: str, port: int, cookie: str, csrf: str, call: Call) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    target = call.path + ("?" + urlencode(call.query) if call.query else "")
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    body = None
    if call.method == "POST":
        body = urlencode({**call.form, "csrf": csrf}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(call.method, target, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _explore(host: str, port: int, cookie: str, csrf: str) -> None:
    @settings(max_examples=250, deadline=None, database=None, derandomize=True)
    @given(call=calls())
    def one(call: Call) -> None:
        response = _send(host, port, cookie, csrf, call)
        assert response.status < 500, (response.status, call)
        assert response.getheader("X-Frame-Options") == "DENY", call
        assert response.getheader("Content-Security-Policy"), call

    one()


async def test_no_route_answers_5xx_to_random_and_boundary_values(env: Env) -> None:
    await env.add_officer("chief", "admin")
    await env.add_report(env.unit_a)
    assert await env.login("chief") == 303
    csrf = await env.csrf()
    jar = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/admin/"))
    cookie = jar[SESSION_COOKIE].value
    url = env.client.make_url("/")
    assert url.host is not None and url.port is not None
    await asyncio.to_thread(_explore, url.host, url.port, cookie, csrf)
    # Still signed in and working afterwards.
    assert (await env.client.get("/admin/", allow_redirects=False)).status == 200
