"""Sign-in and web-server hardening (issue 12), through aiohttp's test client and real sockets,
on SQLite and PostgreSQL."""

# ruff: noqa: F811 (the env fixture is imported from tests.test_admin)

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from admin.auth import SESSION_COOKIE
from admin.clients import Clients
from admin.security import edge
from admin.server import ServerLimits, serve
from storage.models import Officer, RateHit
from tests.test_admin import CSRF_RE, PASSWORD, Env, env  # noqa: F401 (the fixture)

SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options")


@pytest.fixture
def behind_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test client connects from 127.0.0.1: make it the trusted reverse proxy."""
    monkeypatch.setenv("TINBAO_TRUSTED_PROXIES", "127.0.0.1,::1")


async def _login_form_csrf(env: Env) -> str:
    page = await env.client.get("/admin/login")
    found = CSRF_RE.search(await page.text())
    assert found is not None
    return found[1]


async def _login(env: Env, username: str, password: str, **headers: str) -> int:
    csrf = await _login_form_csrf(env)
    response = await env.client.post(
        "/admin/login",
        data={"username": username, "password": password, "csrf": csrf},
        headers=headers,
        allow_redirects=False,
    )
    return response.status


# --------------------------------------------------------------------------- the throttle


async def test_parallel_wrong_logins_check_no_more_passwords_than_the_limit(env: Env) -> None:
    await env.add_officer("chief", "admin")
    csrf = await _login_form_csrf(env)

    async def attempt() -> int:
        response = await env.client.post(
            "/admin/login",
            data={"username": "chief", "password": "a wrong guess!!", "csrf": csrf},
            allow_redirects=False,
        )
        return response.status

    statuses = await asyncio.gather(*(attempt() for _ in range(60)))
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= 3  # TINBAO_ADMIN_LOGIN_ATTEMPTS_PER_ACCOUNT in the fixture
    # A flood may be refused whole (every attempt counts the others): that fails closed.
    async with env.service.session_factory() as db:
        kept = await db.scalar(select(func.count()).select_from(RateHit))
    assert kept is not None and kept <= 2 * 3  # refused attempts leave no record


async def test_a_burst_of_logins_leaves_the_server_answering(env: Env) -> None:
    await env.add_officer("chief", "admin")
    csrf = await _login_form_csrf(env)
    logins = [
        asyncio.ensure_future(
            env.client.post(
                "/admin/login",
                data={"username": f"user{i % 7}", "password": "wrong password!", "csrf": csrf},
                allow_redirects=False,
            )
        )
        for i in range(100)
    ]
    await asyncio.sleep(0)
    health = await env.client.get("/healthz")
    assert health.status == 200
    assert not all(task.done() for task in logins)  # answered while the hashing goes on
    statuses = [(await task).status for task in logins]
    assert all(status in (401, 429) for status in statuses), statuses  # never 500


async def test_the_right_password_from_another_address_still_works(
    behind_proxy: None, env: Env
) -> None:
    await env.add_officer("chief", "admin")
    attacker = {"X-Forwarded-For": "203.0.113.5"}
    for _ in range(3):
        assert await _login(env, "chief", "not the password", **attacker) == 401
    assert await _login(env, "chief", "not the password", **attacker) == 429
    assert await _login(env, "chief", PASSWORD, **attacker) == 429
    env.client.session.cookie_jar.clear()
    owner = {"X-Forwarded-For": "198.51.100.7, 127.0.0.1"}
    assert await _login(env, "chief", PASSWORD, **owner) == 303


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(env: Env) -> None:
    await env.add_officer("chief", "admin")
    for i in range(3):
        headers = {"X-Forwarded-For": f"203.0.113.{i}"}
        assert await _login(env, "chief", "not the password", **headers) == 401
    # A new forged address does not help: the peer (127.0.0.1) is what counts.
    assert await _login(env, "chief", PASSWORD, **{"X-Forwarded-For": "198.51.100.7"}) == 429


def test_the_client_address_is_the_nearest_untrusted_hop() -> None:
    from ipaddress import ip_network

    from aiohttp.test_utils import make_mocked_request

    clients = Clients.of([ip_network("10.0.0.0/8")])

    def from_peer(peer: str, forwarded: str) -> str:
        request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": forwarded})
        return clients.address(request.clone(remote=peer))

    assert from_peer("10.0.0.1", "1.2.3.4, 5.6.7.8, 10.0.0.9") == "5.6.7.8"
    assert from_peer("192.0.2.1", "1.2.3.4") == "192.0.2.1"  # an untrusted peer's claim
    assert from_peer("10.0.0.1", "junk, 10.0.0.9") == "10.0.0.9"
    assert from_peer("10.0.0.1", "") == "10.0.0.1"


# --------------------------------------------------------------------------- sessions


async def _cookie(env: Env) -> str:
    cookie = env.client.session.cookie_jar.filter_cookies(env.client.make_url("/admin/"))
    return cookie[SESSION_COOKIE].value


async def _page_with(env: Env, cookie: str) -> int:
    env.client.session.cookie_jar.clear()
    response = await env.client.get(
        "/admin/", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}, allow_redirects=False
    )
    return response.status


async def test_a_cookie_copied_before_logout_stops_working(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    copied = await _cookie(env)
    assert await _page_with(env, copied) == 200
    env.client.session.cookie_jar.update_cookies({SESSION_COOKIE: copied})
    assert await env.post("/admin/logout", {}) == 303
    assert await _page_with(env, copied) == 303


async def test_sign_out_everywhere_ends_the_other_sessions(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    laptop = await _cookie(env)
    assert await env.login("chief") == 303
    phone = await _cookie(env)
    assert await _page_with(env, laptop) == 200
    env.client.session.cookie_jar.update_cookies({SESSION_COOKIE: phone})
    page = await (await env.client.get("/admin/")).text()
    assert 'action="/admin/logout/everywhere"' in page
    assert await env.post("/admin/logout/everywhere", {}) == 303
    assert await _page_with(env, laptop) == 303
    assert await _page_with(env, phone) == 303
    assert await env.login("chief") == 303  # signing in again works


async def test_revocation_ends_sessions_even_after_re_enrolment(env: Env) -> None:
    from handlers.officers import Registry

    officer_id = await env.add_officer("lan", "officer", "qa")
    assert await env.login("lan") == 303
    copied = await _cookie(env)
    async with env.service.session_factory() as db, db.begin():
        officer = await db.get(Officer, officer_id)
        assert officer is not None
        await Registry(db).revoke(officer)
    async with env.service.session_factory() as db, db.begin():
        officer = await db.get(Officer, officer_id)
        assert officer is not None
        officer.active = True  # enrolled again later
    assert await _page_with(env, copied) == 303


async def test_a_new_password_ends_sessions(env: Env, db_url: str, tmp_path, monkeypatch) -> None:
    from admin.cli import create_user
    from tests.e2e import TEST_SECRET_KEY

    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    copied = await _cookie(env)
    monkeypatch.setenv("TINBAO_DATABASE_URL", db_url)
    monkeypatch.setenv("TINBAO_SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("TINBAO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TINBAO_ADMIN_PASSWORD", "another long passphrase")
    argv = ["--username", "chief", "--role", "admin", "--reset"]
    assert await asyncio.to_thread(create_user, argv) == 0
    assert await _page_with(env, copied) == 303


async def test_cookie_is_secure_and_hsts_sent_behind_a_tls_proxy(
    behind_proxy: None, env: Env
) -> None:
    await env.add_officer("chief", "admin")
    tls = {"X-Forwarded-Proto": "https"}
    response = await env.client.get("/admin/login", headers=tls)
    assert "Secure" in response.headers["Set-Cookie"]
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    plain = await env.client.get("/admin/login")
    assert "Secure" not in plain.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in plain.headers


async def test_forwarded_proto_is_ignored_from_an_untrusted_peer(env: Env) -> None:
    response = await env.client.get("/admin/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in response.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in response.headers


async def test_force_https_marks_cookies_secure(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    # The env fixture has built the app already: build another with the setting on.
    from admin.web import build_web_app

    monkeypatch.setattr(env.service.settings, "force_https", True)
    client = TestClient(TestServer(build_web_app(env.service)))
    await client.start_server()
    try:
        response = await client.get("/admin/login")
        assert "Secure" in response.headers["Set-Cookie"]
        assert "Strict-Transport-Security" in response.headers
    finally:
        await client.close()


# --------------------------------------------------------------------------- parameters


BAD_QUERIES = (
    "/admin/reports?to=9999-12-31",
    "/admin/reports?from=0001-01-01",
    "/admin/reports?from=2025-02-30",
    "/admin/reports?after=" + "9" * 60,
    "/admin/reports?status=nonsense",
    "/admin/reports?unit=" + "x" * 300,
    "/admin/reports?code=%00",
    "/admin/audit?actor=%C2%B2",
    "/admin/audit?actor=" + "9" * 60,
    "/admin/audit?before=" + "9" * 60,
    "/admin/audit?to=9999-12-31",
    "/admin/audit?action=%00x",
    "/admin/stats?period=9999",
    "/admin/stats?period=0000-01",
    "/admin/stats/export.csv?period=2025-13",
    f"/admin/media/{2**63}",
    "/admin/media/" + "1" * 60,
    "/admin/media/%C2%B2",
)


async def test_bad_parameters_get_a_400_page_with_the_security_headers(env: Env) -> None:
    import base64

    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    huge_cursor = base64.urlsafe_b64encode(f"2025-01-01T00:00:00+00:00|{'9' * 60}".encode())
    far_cursor = base64.urlsafe_b64encode(b"9999-12-31T00:00:00+00:00|5")
    for path in (
        *BAD_QUERIES,
        f"/admin/reports?after={huge_cursor.decode()}",
        f"/admin/reports?after={far_cursor.decode()}",
    ):
        response = await env.client.get(path, allow_redirects=False)
        assert response.status == 400, path
        for header in SECURITY_HEADERS:
            assert header in response.headers, (path, header)
        assert "<html" in await response.text()


async def test_a_huge_telegram_id_on_enrolment_is_refused(env: Env) -> None:
    await env.add_officer("chief", "admin")
    assert await env.login("chief") == 303
    for user_id in ("9" * 60, str(2**63), "²", "-5"):
        form = {"telegram_user_id": user_id, "name": "X", "role": "officer", "queue": "qa"}
        assert await env.post("/admin/officers/enrol", form) == 400, user_id
    async with env.service.session_factory() as db:
        count = await db.scalar(select(func.count()).select_from(Officer))
    assert count == 1


async def test_error_pages_carry_the_security_headers(env: Env) -> None:
    await env.add_officer("lan", "officer", "qa")
    assert await env.login("lan") == 303
    for path, status in (
        ("/admin/reports/AAAAAAAAAA", 404),
        ("/admin/no-such-page", 404),
        ("/no-such-page", 404),
        ("/admin/stats", 403),
        (f"/admin/media/{2**62}", 404),
    ):
        response = await env.client.get(path, allow_redirects=False)
        assert response.status == status, path
        for header in SECURITY_HEADERS:
            assert header in response.headers, (path, header)
    response = await env.client.put("/admin/reports", allow_redirects=False)
    assert response.status == 405
    assert "Content-Security-Policy" in response.headers


async def test_an_unhandled_error_is_a_500_with_the_security_headers() -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[edge(Clients(), body_timeout=5, max_body=1024**2)])
    app.router.add_get("/", broken)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/")
        assert response.status == 500
        assert "boom" not in await response.text()
        for header in SECURITY_HEADERS:
            assert header in response.headers


# --------------------------------------------------------------------------- the server


@pytest.fixture
async def limited() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(text="ok")

    app = web.Application(middlewares=[edge(Clients(), body_timeout=0.5, max_body=1024**2)])
    app.router.add_route("*", "/", hello)
    served = await serve(app, "127.0.0.1", 0, ServerLimits(header_timeout=0.5, max_connections=3))
    try:
        yield served.port
    finally:
        await served.stop()


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout=30)


async def test_slow_headers_are_timed_out(limited: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    await writer.drain()
    assert await _closed_by_server(reader) == b""  # closed, not answered
    writer.close()


async def test_a_slow_body_is_timed_out(limited: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 100\r\n\r\na=1"
    )
    await writer.drain()
    answer = await _closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_connections_beyond_the_cap_are_refused(limited: int) -> None:
    held = [await asyncio.open_connection("127.0.0.1", limited) for _ in range(3)]
    await asyncio.sleep(0.05)  # let the server register them
    reader, writer = await asyncio.open_connection("127.0.0.1", limited)
    assert (await _closed_by_server(reader)).startswith(b"HTTP/1.1 503")
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _closed_by_server(reader)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_malformed_request_logs_no_client_address(
    limited: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    await writer.drain()
    answer = await _closed_by_server(reader)
    assert b" 431 " in answer.split(b"\r\n", 1)[0] or b" 400 " in answer.split(b"\r\n", 1)[0]
    writer.close()
    errors = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert errors, "aiohttp logs the malformed request"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        if record.exc_info and record.exc_info[1] is not None:
            text += logging.Formatter().formatException(record.exc_info)
        assert "127.0.0.1" not in text
    assert "malformed request" in errors[0].getMessage()
