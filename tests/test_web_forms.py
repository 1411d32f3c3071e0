"""The citizens' forms over HTTP (issue 11): against scripted spam, from the posters, and the
description's own checks.

The spam challenge: a wrong answer, a replayed challenge and an expired one are each refused with
their own clear message beside the question, a new question is asked, and nothing the citizen
typed (nor an image already cleaned) is lost. The posters' link ``/?u=<unit code>`` preselects the
unit all the way to the officers' group; a hostile or unknown ``u`` is ignored safely.
"""

from __future__ import annotations

import html as html_lib
import re
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientSession, CookieJar, FormData
from sqlalchemy import func, select

from admin.auth import hash_password
from bot.runtime import Service
from bot.web import guard
from handlers.i18n import t
from storage.models import Officer, OfficerScope, Report, ReportMedia
from tests.standin import BotAPIStandIn
from tests.web_support import (
    DUTY,
    LX,
    LX_UNIT,
    base_url_fixture,  # noqa: F401 - fixture
    challenge_of,
    code_and_pin,
    gps_jpeg,
    hidden,
    service_fixture,  # noqa: F401 - fixture
    standin_fixture,  # noqa: F401 - fixture
)

DESCRIPTION = "Có người lạ bán hàng cấm ở quán nước đầu hẻm 5, tối nào cũng có <b>3 người</b>"
TIP = {
    "category": "drugs",
    "place_q": "long xuyen",
    "occurred": "other",
    "occurred_text": "Tối thứ Bảy, khoảng 21 giờ",
    "description": DESCRIPTION,
    "contact": "none",
}


class Form:
    """A form page as the browser got it: its CSRF token, its question and the sealed answer."""

    def __init__(self, page: str) -> None:
        self.page = page
        self.csrf = hidden(page, "csrf")
        self.token = hidden(page, "challenge_token")
        self.question = hidden(page, "challenge_question")
        self.answer = challenge_of(page)

    @property
    def wrong(self) -> str:
        return str((int(self.answer) + 1) % 100)


async def open_form(http: ClientSession, base: str, path: str) -> Form:
    async with http.get(f"{base}{path}") as response:
        assert response.status == 200
        return Form(await response.text())


async def post(
    http: ClientSession,
    base: str,
    path: str,
    form: Form,
    answer: str,
    fields: dict[str, str],
    files=(),
    *,
    token: str | None = None,
) -> tuple[int, str]:
    data = FormData()
    data.add_field("csrf", form.csrf)
    data.add_field("lang", "vi")
    data.add_field("challenge_question", form.question)
    data.add_field("challenge_token", form.token if token is None else token)
    data.add_field("challenge", answer)
    for name, value in fields.items():
        data.add_field(name, value)
    for name, filename, content, mime in files:
        data.add_field(name, content, filename=filename, content_type=mime)
    async with http.post(f"{base}{path}", data=data) as response:
        return response.status, await response.text()


def challenge_error(page: str) -> str | None:
    found = re.search(r'<p class="error" id="challenge-error" role="alert">([^<]*)</p>', page)
    return html_lib.unescape(found.group(1)) if found else None


def assert_kept(page: str, fields: dict[str, str]) -> None:
    """Every field typed comes back (escaped) in the form shown again."""
    for name in ("description", "occurred_text", "place_q"):
        if fields.get(name):
            assert html_lib.escape(fields[name], quote=False) in page.replace("&#39;", "'"), name
    if fields.get("category"):
        assert f'value="{fields["category"]}" checked' in page


async def reports(service: Service) -> int:
    async with service.session_factory() as db:
        return int(await db.scalar(select(func.count()).select_from(Report)) or 0)


# --------------------------------------------------------------------------- the challenge


async def test_a_wrong_answer_is_refused_and_everything_typed_is_kept(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        form = await open_form(http, base_url, "/tip")
        photo = [("evidence", "a.jpg", gps_jpeg(), "image/jpeg")]
        status, page = await post(http, base_url, "/tip", form, form.wrong, TIP, photo)
        assert status == 400
        assert challenge_error(page) == t("vi", "web.err.challenge")
        assert 'aria-describedby="challenge-error"' in page
        assert_kept(page, TIP)
        # The photo, already cleaned, is kept too; a new question is asked.
        assert t("vi", "web.field.kept", count=1) in page
        again = Form(page)
        assert again.token != form.token
        assert re.search(r'name="challenge" [^>]*value=""', page)  # its answer box empty
        assert await reports(service) == 0
        # Answering the new question sends the report as typed, with the photo.
        fields = {**TIP, "kept": hidden(page, "kept")}
        status, page = await post(http, base_url, "/tip", again, again.answer, fields)
        assert status == 200, page[:2000]
        code, _ = code_and_pin(page)
    await standin.wait_for(lambda c: c.chat_id == LX.id and code in str(c.params), timeout=10)
    async with service.session_factory() as db:
        report = await db.scalar(select(Report))
        assert report is not None and report.description == DESCRIPTION
        assert report.occurred_text == TIP["occurred_text"]
        media = await db.scalar(select(func.count()).select_from(ReportMedia))
        assert media == 1


async def test_a_replayed_challenge_is_refused_and_the_report_is_not_stored_twice(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        form = await open_form(http, base_url, "/tip")
        status, page = await post(http, base_url, "/tip", form, form.answer, TIP)
        assert status == 200, page[:2000]
        code_and_pin(page)
        # The same form sent again (back button, a second press, or a script replaying it).
        status, page = await post(http, base_url, "/tip", form, form.answer, TIP)
        assert status == 400
        assert challenge_error(page) == t("vi", "web.err.challenge_used")
        assert_kept(page, TIP)
        assert await reports(service) == 1
        # Even with another form's CSRF token, in another browser: the question was used.
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as other:
        fresh = await open_form(other, base_url, "/tip")
        status, page = await post(
            other, base_url, "/tip", fresh, form.answer, TIP, token=form.token
        )
        assert status == 400 and challenge_error(page) == t("vi", "web.err.challenge_used")
        assert await reports(service) == 1
        # The new question on the page works: a citizen who meant to send twice can.
        again = Form(page)
        status, page = await post(other, base_url, "/tip", again, again.answer, TIP)
        assert status == 200, page[:2000]
    assert await reports(service) == 2


async def test_an_expired_challenge_is_refused_and_everything_typed_is_kept(
    base_url: str, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        # A form loaded long ago: its question's time ran out before it was sent.
        with monkeypatch.context() as patch:
            patch.setattr(guard, "CHALLENGE_TTL", -1)
            form = await open_form(http, base_url, "/tip")
            accident = await open_form(http, base_url, "/accident?lang=en")
        status, page = await post(http, base_url, "/tip", form, form.answer, TIP)
        assert status == 400
        assert challenge_error(page) == t("vi", "web.err.challenge_expired")
        assert_kept(page, TIP)
        assert await reports(service) == 0
        again = Form(page)
        status, page = await post(http, base_url, "/tip", again, again.answer, TIP)
        assert status == 200, page[:2000]

        # The accident page, in English: the same, with the place typed kept.
        place = "Ngã tư Long Xuyên, xe tải va xe máy"
        data = FormData(
            {
                "csrf": accident.csrf,
                "lang": "en",
                "challenge_question": accident.question,
                "challenge_token": accident.token,
                "challenge": accident.answer,
                "place_q": place,
                "injured": "yes",
            }
        )
        async with http.post(f"{base_url}/accident", data=data) as r:
            status, page = r.status, await r.text()
        assert status == 400
        assert challenge_error(page) == t("en", "web.err.challenge_expired")
        assert place in page
    assert await reports(service) == 1


async def test_a_forged_or_empty_challenge_is_refused_as_a_wrong_answer(
    base_url: str, service: Service
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        form = await open_form(http, base_url, "/tip")
        for token, answer in (
            ("", form.answer),
            ("not-a-sealed-token", form.answer),
            (form.token[:-4] + "AAAA", form.answer),
            (form.token, ""),
            (form.token, "٩٩"),  # Arabic-Indic digits: read as 99, never a sum asked
            (form.token, "²"),  # a digit to str.isdigit(), not to int()
            (form.token, "9" * 500),
        ):
            status, page = await post(http, base_url, "/tip", form, answer, TIP, token=token)
            assert status == 400, (token, answer)
            assert challenge_error(page) == t("vi", "web.err.challenge"), (token, answer)
            assert_kept(page, TIP)
    assert await reports(service) == 0


# --------------------------------------------------------------------------- the description


@pytest.mark.parametrize(
    ("description", "key"),
    [("Trộm xe", "desc.too_short"), ("Trộm xe máy. " * 400, "desc.too_long")],
)
async def test_a_description_too_short_or_too_long_is_told_beside_it_and_kept(
    base_url: str, service: Service, description: str, key: str
) -> None:
    """As the chat says it (the same catalogue string, with its minimum and its length)."""
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        form = await open_form(http, base_url, "/tip?lang=en")
        fields = {**TIP, "description": description}
        data = FormData(
            {
                "csrf": form.csrf,
                "lang": "en",
                "challenge_question": form.question,
                "challenge_token": form.token,
                "challenge": form.answer,
                **fields,
            }
        )
        async with http.post(f"{base_url}/tip", data=data) as r:
            status, page = r.status, await r.text()
    assert status == 400, page[:2000]
    found = re.search(r'<p class="error" id="description-error" role="alert">([^<]*)</p>', page)
    assert found, page[:3000]
    told = t("en", key, minimum=10, limit=4000, length=len(description.strip()))
    assert html_lib.unescape(found.group(1)) == told
    assert_kept(page, fields)
    assert await reports(service) == 0


# --------------------------------------------------------------------------- the posters' link


async def poster_link(base_url: str, service: Service) -> str:
    """The web address printed on the unit's poster, as a commander prints it from the panel."""
    async with service.session_factory() as db, db.begin():
        db.add(
            Officer(
                display_name="Chỉ huy",
                role="commander",
                username="boss",
                password_hash=hash_password("correct horse battery staple"),
                scopes=[OfficerScope(queue_key="*")],
            )
        )
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as panel:
        async with panel.get(f"{base_url}/admin/login") as r:
            csrf = hidden(await r.text(), "csrf")
        data = {"username": "boss", "password": "correct horse battery staple", "csrf": csrf}
        async with panel.post(f"{base_url}/admin/login", data=data) as r:
            assert r.status == 200
        async with panel.get(f"{base_url}/admin/units/{LX_UNIT}/poster") as r:
            page = await r.text()
    lead = html_lib.escape(t("vi", "web.poster.web"), quote=False)
    printed = re.search(rf'<p class="link">{re.escape(lead)} (\S+)</p>', page)
    assert printed, page[:3000]
    return html_lib.unescape(printed.group(1))


async def test_the_posters_link_preselects_the_unit_up_to_the_officers_group(
    base_url: str, service: Service, standin: BotAPIStandIn
) -> None:
    printed = await poster_link(base_url, service)
    assert printed == f"https://tinbao.example.vn/?u={LX_UNIT}"
    parts = urlsplit(printed)
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        async with http.get(f"{base_url}{parts.path}?{parts.query}") as r:
            home = await r.text()
        tip_link = re.search(r'<a class="big tip" href="([^"]+)"', home)
        assert tip_link, home[:2000]
        href = html_lib.unescape(tip_link.group(1))
        assert f"u={LX_UNIT}" in href
        form = await open_form(http, base_url, href)
        assert f'name="unit" value="{LX_UNIT}" checked' in form.page
        assert t("vi", "web.field.unit_from_poster", unit="Phường Long Xuyên") in form.page
        # Sent as preselected: no commune typed, none located.
        fields = {**TIP, "place_q": "", "unit": LX_UNIT}
        status, page = await post(http, base_url, "/tip", form, form.answer, fields)
        assert status == 200, page[:2000]
        code, _ = code_and_pin(page)
    await standin.wait_for(lambda c: c.chat_id == LX.id and code in str(c.params), timeout=10)
    async with service.session_factory() as db:
        report = await db.scalar(select(Report))
        assert report is not None and report.unit_code == LX_UNIT
    assert not any(code in text for text in standin.texts_to(DUTY))


HOSTILE_UNITS = (
    "99999",  # shaped like a unit code, but no unit has it
    f"{LX_UNIT} ",
    f"{LX_UNIT}\x00",
    f"{LX_UNIT}<script>",
    "３０３０７",  # full-width digits
    "<script>alert(1)</script>",
    '" onmouseover="alert(1)',
    "' OR 1=1 --",
    "../../admin",
    "%00",
    "x" * 5000,
)


@pytest.mark.parametrize("path", ["/", "/tip", "/accident"])
async def test_a_hostile_or_unknown_unit_link_is_ignored_safely(
    base_url: str, service: Service, path: str
) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        for hostile in HOSTILE_UNITS:
            async with http.get(f"{base_url}{path}", params={"u": hostile}) as r:
                page = await r.text()
                assert r.status == 200, hostile
            assert "<script>alert" not in page and 'onmouseover="alert' not in page
            assert 'name="unit" value=' not in page, hostile
            assert "u=" not in (re.search(r'class="big tip" href="([^"]*)"', page) or [""])[0]
            assert t("vi", "web.field.unit_from_poster", unit="")[:20] not in page
        # Two values (one of them right): the page takes the first, and only a real unit.
        async with http.get(f"{base_url}{path}?u=<b>&u={LX_UNIT}") as r:
            page = await r.text()
            assert r.status == 200 and 'name="unit" value=' not in page
        if path == "/tip":
            # A forged unit sent with the form is ignored: the commune must then be given.
            form = await open_form(http, base_url, "/tip")
            fields = {**TIP, "place_q": "", "unit": "99999"}
            status, page = await post(http, base_url, "/tip", form, form.answer, fields)
            assert status == 400 and 'id="place-error"' in page
            assert_kept(page, fields)
    assert await reports(service) == 0
